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
            } else if let Some(ident) = connection_like_parameter(item) {
                // Without this, the block would silently run on another (pooled) connection
                // than the one the caller passed in.
                errors.push(syn::Error::new_spanned(
                    ident,
                    format!(
                        "`{ident}` looks like a connection, but #[atomic] runs on a parameter \
                         named `conn` (explicit mode) or checks one out of the alias's pool \
                         (ambient mode); rename it to `conn` or write `#[atomic(conn = {ident})]`"
                    ),
                ));
            }
            ConnectionSource::Ambient
        }
    }
}

/// A `&mut` parameter whose type looks like a diesel connection: a type named `*Connection`,
/// `impl *Connection`, or a generic parameter bounded by `*Connection`.
fn connection_like_parameter(item: &ItemFn) -> Option<&Ident> {
    let generic_connections: Vec<&Ident> = item
        .sig
        .generics
        .type_params()
        .filter(|param| param.bounds.iter().any(bound_is_connection))
        .map(|param| &param.ident)
        .chain(
            item.sig
                .generics
                .where_clause
                .iter()
                .flat_map(|clause| clause.predicates.iter())
                .filter_map(|predicate| match predicate {
                    syn::WherePredicate::Type(predicate)
                        if predicate.bounds.iter().any(bound_is_connection) =>
                    {
                        match &predicate.bounded_ty {
                            Type::Path(path) => path.path.get_ident(),
                            _ => None,
                        }
                    }
                    _ => None,
                }),
        )
        .collect();
    item.sig.inputs.iter().find_map(|input| {
        let FnArg::Typed(typed) = input else {
            return None;
        };
        let (Pat::Ident(pat), Type::Reference(reference)) = (&*typed.pat, &*typed.ty) else {
            return None;
        };
        reference.mutability?;
        let looks_like_connection = match &*reference.elem {
            Type::Path(path) => path.path.segments.last().is_some_and(|segment| {
                segment.ident.to_string().ends_with("Connection")
                    || generic_connections.contains(&&segment.ident)
            }),
            Type::ImplTrait(bounds) => bounds.bounds.iter().any(bound_is_connection),
            _ => false,
        };
        looks_like_connection.then_some(&pat.ident)
    })
}

fn bound_is_connection(bound: &syn::TypeParamBound) -> bool {
    match bound {
        syn::TypeParamBound::Trait(bound) => bound
            .path
            .segments
            .last()
            .is_some_and(|segment| segment.ident.to_string().ends_with("Connection")),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;

    fn check_fn(tokens: proc_macro2::TokenStream) -> Result<ConnectionSource, String> {
        let item: ItemFn = syn::parse2(tokens).unwrap();
        check(&item, None).map_err(|error| error.to_string())
    }

    #[test]
    fn a_connection_under_another_name_is_refused() {
        for tokens in [
            quote!(
                fn f(_conn: &mut SqliteConnection) -> R {
                    x
                }
            ),
            quote!(
                fn f<C: diesel::Connection>(c: &mut C) -> R {
                    x
                }
            ),
            quote!(
                fn f<C>(c: &mut C) -> R
                where
                    C: Connection,
                {
                    x
                }
            ),
            quote!(
                fn f(c: &mut impl Connection) -> R {
                    x
                }
            ),
        ] {
            let error = check_fn(tokens).err().expect("refused");
            assert!(error.contains("looks like a connection"), "{error}");
        }
    }

    #[test]
    fn other_mut_parameters_keep_ambient_mode() {
        let source = check_fn(quote!(
            fn f(buffer: &mut Vec<u8>) -> R {
                x
            }
        ))
        .unwrap();
        assert!(matches!(source, ConnectionSource::Ambient));
    }
}
