//! Checks on the function `#[atomic]` is applied to.

use syn::spanned::Spanned;
use syn::{FnArg, Ident, ItemFn, Pat, ReturnType, Type};

/// How the block gets its connection.
pub(crate) enum ConnectionSource {
    /// Checked out from the alias's pool.
    Ambient,
    /// The named `&mut` parameter.
    Explicit(Ident),
}

/// Checks the signature and finds the connection parameter; problems are combined.
pub(crate) fn check(item: &ItemFn, conn: Option<&Ident>) -> syn::Result<ConnectionSource> {
    let mut errors: Vec<syn::Error> = Vec::new();
    let sig = &item.sig;
    if let Some(asyncness) = &sig.asyncness {
        errors.push(syn::Error::new_spanned(
            asyncness,
            "#[atomic] does not support `async fn` yet: diesel connections are synchronous; \
             run the work in a synchronous function (e.g. on a blocking thread pool)",
        ));
    }
    if let Some(constness) = &sig.constness {
        errors.push(syn::Error::new_spanned(
            constness,
            "#[atomic] cannot be applied to a `const fn`: a transaction runs at run time",
        ));
    }
    match &sig.output {
        ReturnType::Default => errors.push(syn::Error::new_spanned(
            &sig.ident,
            "#[atomic] needs a function that returns `Result<T, E>` with \
             `E: From<diesel_atomic::Error>`; this one returns nothing",
        )),
        ReturnType::Type(_, ty) if matches!(**ty, Type::Tuple(ref t) if t.elems.is_empty()) => {
            errors.push(syn::Error::new_spanned(
                ty,
                "#[atomic] needs a function that returns `Result<T, E>`, not `()`",
            ))
        }
        ReturnType::Type(..) => {}
    }

    let source = find_connection(item, conn, &mut errors);
    let mut combined = errors.into_iter();
    match combined.next() {
        None => Ok(source),
        Some(mut first) => {
            combined.for_each(|error| first.combine(error));
            Err(first)
        }
    }
}

fn find_connection(
    item: &ItemFn,
    wanted: Option<&Ident>,
    errors: &mut Vec<syn::Error>,
) -> ConnectionSource {
    let name = wanted.map_or_else(|| "conn".to_owned(), Ident::to_string);
    let found = item.sig.inputs.iter().find_map(|input| match input {
        FnArg::Typed(typed) => match &*typed.pat {
            Pat::Ident(pat) if pat.ident == name => Some((pat.ident.clone(), &*typed.ty)),
            _ => None,
        },
        FnArg::Receiver(_) => None,
    });
    match found {
        Some((ident, Type::Reference(reference))) if reference.mutability.is_some() => {
            ConnectionSource::Explicit(ident)
        }
        Some((_, ty)) => {
            errors.push(syn::Error::new(
                ty.span(),
                format!(
                    "the connection parameter `{name}` must be `&mut` a connection: \
                     a transaction needs `&mut` access"
                ),
            ));
            ConnectionSource::Ambient
        }
        None => {
            if let Some(wanted) = wanted {
                errors.push(syn::Error::new_spanned(
                    wanted,
                    format!("`conn = {name}` names no parameter of this function"),
                ));
            }
            ConnectionSource::Ambient
        }
    }
}
