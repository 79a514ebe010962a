//! Checks on the item an attribute is applied to, each error spanned on the part at fault.

use proc_macro2::TokenStream;
use quote::{ToTokens, quote};
use syn::{FnArg, Ident, Item, ItemFn, Meta, Pat, ReturnType, Type};

use crate::args::{self, AtomicArgs, Attribute};
use crate::errors::Errors;
use crate::suggest;

/// How an `#[atomic]` block gets its connection.
pub(crate) enum ConnectionSource {
    /// Checked out from the alias's pool.
    Ambient,
    /// The named `&mut` parameter.
    Explicit(Ident),
}

/// The item as a function with a body, or an error naming what it is instead.
pub(crate) fn function(item: TokenStream, attribute: Attribute) -> syn::Result<ItemFn> {
    let name = attribute.name();
    if let Ok(function) = syn::parse2::<ItemFn>(item.clone()) {
        return Ok(function);
    }
    // A declaration without a body: a trait method, or a function in an `extern` block.
    if let Ok(declaration) = syn::parse2::<syn::TraitItemFn>(item.clone()) {
        return Err(syn::Error::new_spanned(
            &declaration.sig,
            format!(
                "{name} needs a function with a body; on a trait method, put it on the \
                 method in each `impl` instead"
            ),
        ));
    }
    match syn::parse2::<Item>(item) {
        Ok(item) => {
            let (what, tokens, advice) = describe(&item);
            Err(syn::Error::new_spanned(
                tokens,
                format!("{name} applies to functions, not to {what}{advice}"),
            ))
        }
        Err(error) => Err(syn::Error::new(
            error.span(),
            format!("{name} applies to functions: {error}"),
        )),
    }
}

/// What kind of item this is, the tokens to point at, and advice, for "not a function".
fn describe(item: &Item) -> (&'static str, TokenStream, &'static str) {
    const ON_METHODS: &str = "; put it on the methods that need it";
    fn pair(keyword: &impl ToTokens, name: &impl ToTokens) -> TokenStream {
        quote!(#keyword #name)
    }
    match item {
        Item::Struct(item) => ("structs", pair(&item.struct_token, &item.ident), ""),
        Item::Enum(item) => ("enums", pair(&item.enum_token, &item.ident), ""),
        Item::Union(item) => ("unions", pair(&item.union_token, &item.ident), ""),
        Item::Impl(item) => (
            "`impl` blocks",
            pair(&item.impl_token, &item.self_ty),
            ON_METHODS,
        ),
        Item::Trait(item) => ("traits", pair(&item.trait_token, &item.ident), ON_METHODS),
        Item::Const(item) => ("constants", pair(&item.const_token, &item.ident), ""),
        Item::Static(item) => ("statics", pair(&item.static_token, &item.ident), ""),
        Item::Mod(item) => ("modules", pair(&item.mod_token, &item.ident), ON_METHODS),
        Item::Type(item) => ("type aliases", pair(&item.type_token, &item.ident), ""),
        Item::Use(item) => ("`use` declarations", item.use_token.to_token_stream(), ""),
        Item::ForeignMod(item) => ("`extern` blocks", item.abi.to_token_stream(), ""),
        Item::ExternCrate(item) => (
            "`extern crate` items",
            pair(&item.extern_token, &item.crate_token),
            "",
        ),
        Item::Macro(item) => ("macro invocations", item.mac.path.to_token_stream(), ""),
        other => ("this item", first_tokens(other), ""),
    }
}

fn first_tokens(item: &Item) -> TokenStream {
    item.to_token_stream().into_iter().take(2).collect()
}

/// `async fn` and `const fn` cannot run a block; problems go to `errors`.
pub(crate) fn runs_at_run_time(function: &ItemFn, attribute: Attribute, errors: &mut Errors) {
    let name = attribute.name();
    if let Some(asyncness) = &function.sig.asyncness {
        errors.push(syn::Error::new_spanned(
            asyncness,
            format!(
                "{name} does not support `async fn` yet: diesel connections are synchronous; \
                 put the database work in a synchronous function (from async code, call it \
                 on a blocking thread pool)"
            ),
        ));
    }
    if let Some(constness) = &function.sig.constness {
        errors.push(syn::Error::new_spanned(
            constness,
            format!(
                "{name} cannot be applied to a `const fn`: it works at run time; remove `const`"
            ),
        ));
    }
}

/// `#[atomic]` needs `Result<T, E>`: the block commits on `Ok` and rolls back on `Err`.
///
/// Only types that are certainly not a `Result` are refused here; a type alias (`QueryResult`,
/// `io::Result`, `MyResult`) is left to the compiler, whose error the expansion points at the
/// return type.
pub(crate) fn returns_result(function: &ItemFn) -> syn::Result<()> {
    const NEEDS_RESULT: &str = "#[atomic] needs a function that returns `Result<T, E>` (such as \
                                `QueryResult<T>`): the block commits when it returns `Ok` and \
                                rolls back on `Err`";
    match &function.sig.output {
        ReturnType::Default => Err(syn::Error::new_spanned(
            &function.sig.ident,
            format!("{NEEDS_RESULT}; this function returns nothing: add `-> QueryResult<()>`"),
        )),
        ReturnType::Type(_, ty) if certainly_not_result(ty) => {
            Err(syn::Error::new_spanned(ty, NEEDS_RESULT))
        }
        ReturnType::Type(..) => Ok(()),
    }
}

fn certainly_not_result(ty: &Type) -> bool {
    /// Types users might return that are never a `Result` (primitives and the prelude's).
    const NOT_RESULT: &[&str] = &[
        "bool", "char", "str", "i8", "i16", "i32", "i64", "i128", "isize", "u8", "u16", "u32",
        "u64", "u128", "usize", "f32", "f64", "String", "Option", "Vec", "Box",
    ];
    match ty {
        Type::Path(path) if path.qself.is_none() => path
            .path
            .segments
            .last()
            .is_some_and(|last| NOT_RESULT.iter().any(|name| last.ident == name)),
        Type::Path(_) | Type::Macro(_) | Type::Verbatim(_) => false,
        Type::Paren(inner) => certainly_not_result(&inner.elem),
        Type::Group(inner) => certainly_not_result(&inner.elem),
        _ => true,
    }
}

/// Combinations of arguments that cannot do what they say; problems go to `errors`.
///
/// `durable = true` with `savepoint = false` is refused: a durable block is always the
/// outermost one, and `savepoint` only matters for nested blocks. The one place the pair could
/// change anything is directly inside a test transaction, and there it would make the test
/// behave unlike production.
///
/// `retry` without `durable = true` is refused: after a serialization failure or a deadlock
/// the database has lost the whole transaction, so only the outermost block can be rerun, and
/// `durable = true` is how a block says it is the outermost one.
pub(crate) fn options(args: &AtomicArgs, errors: &mut Errors) {
    let durable = args.durable.as_ref().is_some_and(|durable| durable.value);
    if durable
        && let Some(savepoint) = &args.savepoint
        && !savepoint.value
    {
        errors.push(syn::Error::new_spanned(
            &savepoint.tokens,
            "`savepoint = false` has no effect with `durable = true`: a durable block is \
             always the outermost block, and `savepoint` only applies to nested blocks; \
             remove `savepoint = false`",
        ));
    }
    if !durable && let Some(retry) = &args.retry {
        errors.push(syn::Error::new_spanned(
            &retry.key,
            "`retry` reruns the whole transaction, so the block must be the outermost one: add \
             `durable = true` (rerunning an inner block would run it again inside a transaction \
             that is already lost)",
        ));
    }
}

/// Finds the connection parameter: `conn`, or the one `conn = name` names.
pub(crate) fn connection(
    function: &ItemFn,
    wanted: Option<&Ident>,
) -> syn::Result<ConnectionSource> {
    let name = wanted.map_or_else(|| "conn".to_owned(), Ident::to_string);
    let found = function.sig.inputs.iter().find_map(|input| match input {
        FnArg::Typed(typed) => match &*typed.pat {
            Pat::Ident(pat) if pat.ident == name => Some((pat.ident.clone(), &*typed.ty)),
            _ => None,
        },
        FnArg::Receiver(_) => None,
    });
    match found {
        Some((ident, Type::Reference(reference))) if reference.mutability.is_some() => {
            Ok(ConnectionSource::Explicit(ident))
        }
        Some((_, ty)) => Err(syn::Error::new_spanned(
            ty,
            format!(
                "the connection parameter `{name}` must be a `&mut` reference, such as \
                 `{name}: &mut SqliteConnection`: a transaction needs `&mut` access to its \
                 connection"
            ),
        )),
        None => match wanted {
            Some(wanted) => Err(syn::Error::new_spanned(
                wanted,
                format!("`conn = {name}` names no parameter of this function{}", {
                    parameters_hint(function, &name)
                }),
            )),
            None => match connection_like_parameter(function) {
                // Without this, the block would silently run on another (pooled) connection
                // than the one the caller passed in.
                Some(ident) => Err(syn::Error::new_spanned(
                    ident,
                    format!(
                        "`{ident}` looks like a connection, but #[atomic] runs on a parameter \
                         named `conn` (explicit mode) or checks one out of the alias's pool \
                         (ambient mode); rename it to `conn` or write `#[atomic(conn = {ident})]`"
                    ),
                )),
                None => Ok(ConnectionSource::Ambient),
            },
        },
    }
}

/// "; did you mean `db`?" or "; its parameters are `a`, `b`" or "; it has no parameters".
fn parameters_hint(function: &ItemFn, wanted: &str) -> String {
    let names: Vec<String> = function
        .sig
        .inputs
        .iter()
        .filter_map(|input| match input {
            FnArg::Typed(typed) => match &*typed.pat {
                Pat::Ident(pat) => Some(pat.ident.to_string()),
                _ => None,
            },
            FnArg::Receiver(_) => None,
        })
        .collect();
    let candidates: Vec<&str> = names.iter().map(String::as_str).collect();
    if let Some(nearest) = suggest::nearest(wanted, &candidates) {
        return format!("; did you mean `conn = {nearest}`?");
    }
    if names.is_empty() {
        return "; it has no named parameters".to_owned();
    }
    let listed: Vec<String> = names.iter().map(|name| format!("`{name}`")).collect();
    format!("; its parameters are {}", listed.join(", "))
}

/// A `&mut` parameter whose type looks like a diesel connection: a type named `*Connection`,
/// `impl *Connection`, or a generic parameter bounded by `*Connection`.
fn connection_like_parameter(function: &ItemFn) -> Option<&Ident> {
    let generics = &function.sig.generics;
    let generic_connections: Vec<&Ident> = generics
        .type_params()
        .filter(|param| param.bounds.iter().any(bound_is_connection))
        .map(|param| &param.ident)
        .chain(
            generics
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
    function.sig.inputs.iter().find_map(|input| {
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

/// The other `#[atomic]` / `#[non_atomic_requests]` attributes on the same function (the ones
/// that expand after this one) must not contradict or repeat it for the same alias.
pub(crate) fn other_attributes(
    function: &ItemFn,
    this: Attribute,
    alias: &str,
    errors: &mut Errors,
) {
    for attr in &function.attrs {
        let Some(other) = Attribute::from_path(attr.path()) else {
            continue;
        };
        let other_args = match &attr.meta {
            Meta::Path(_) => TokenStream::new(),
            Meta::List(list) => list.tokens.clone(),
            Meta::NameValue(_) => continue,
        };
        // Arguments that do not parse are reported when that attribute expands.
        if args::alias_of(other, other_args).as_deref() != Some(alias) {
            continue;
        }
        let message = if other == this {
            let why = match this {
                Attribute::Atomic => {
                    " (the inner block would only be a savepoint of the outer one)"
                }
                Attribute::NonAtomicRequests => "",
            };
            format!(
                "{} is given twice for alias \"{alias}\"{why}; keep one",
                this.name()
            )
        } else {
            format!(
                "#[atomic] and #[non_atomic_requests] contradict each other for alias \
                 \"{alias}\": keep one; to run part of a non-atomic view in a transaction, move \
                 that part into its own #[atomic] function and call it"
            )
        };
        errors.push(syn::Error::new_spanned(attr, message));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;

    fn parse(tokens: TokenStream) -> ItemFn {
        syn::parse2(tokens).unwrap()
    }

    fn connection_error(tokens: TokenStream, wanted: Option<Ident>) -> String {
        match connection(&parse(tokens), wanted.as_ref()) {
            Ok(_) => String::new(),
            Err(error) => error.to_string(),
        }
    }

    fn function_error(tokens: TokenStream) -> String {
        match function(tokens, Attribute::Atomic) {
            Ok(_) => String::new(),
            Err(error) => error.to_string(),
        }
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
            let error = connection_error(tokens, None);
            assert!(error.contains("looks like a connection"), "{error}");
        }
    }

    #[test]
    fn other_mut_parameters_keep_ambient_mode() {
        let source = connection(
            &parse(quote!(
                fn f(buffer: &mut Vec<u8>) -> R {
                    x
                }
            )),
            None,
        );
        assert!(matches!(source, Ok(ConnectionSource::Ambient)));
    }

    #[test]
    fn conn_must_be_a_mutable_reference() {
        let error = connection_error(
            quote!(
                fn f(conn: &SqliteConnection) -> R {
                    x
                }
            ),
            None,
        );
        assert!(error.contains("must be a `&mut` reference"), "{error}");
        let error = connection_error(
            quote!(
                fn f(conn: SqliteConnection) -> R {
                    x
                }
            ),
            None,
        );
        assert!(error.contains("needs `&mut` access"), "{error}");
    }

    #[test]
    fn conn_naming_no_parameter_suggests_or_lists() {
        let error = connection_error(
            quote!(
                fn f(database: &mut C) -> R {
                    x
                }
            ),
            Some(syn::parse_quote!(databse)),
        );
        assert!(
            error.ends_with("did you mean `conn = database`?"),
            "{error}"
        );
        let error = connection_error(
            quote!(
                fn f(a: u8, b: u8) -> R {
                    x
                }
            ),
            Some(syn::parse_quote!(db)),
        );
        assert!(error.ends_with("its parameters are `a`, `b`"), "{error}");
        let error = connection_error(
            quote!(
                fn f() -> R {
                    x
                }
            ),
            Some(syn::parse_quote!(db)),
        );
        assert!(error.ends_with("it has no named parameters"), "{error}");
    }

    #[test]
    fn items_that_are_not_functions_are_named() {
        assert!(
            function_error(quote!(
                struct S;
            ))
            .contains("not to structs")
        );
        assert!(function_error(quote!(impl S {})).contains("not to `impl` blocks"));
        assert!(
            function_error(quote!(
                const X: u8 = 1;
            ))
            .contains("not to constants")
        );
        assert!(
            function_error(quote!(
                fn f() -> R;
            ))
            .contains("needs a function with a body")
        );
        assert!(function_error(quote!(= =)).contains("applies to functions"));
    }

    #[test]
    fn return_types_that_are_certainly_not_results_are_refused() {
        for tokens in [
            quote!(
                fn f() {}
            ),
            quote!(
                fn f() -> () {}
            ),
            quote!(
                fn f() -> i32 {}
            ),
            quote!(
                fn f() -> Option<u8> {}
            ),
            quote!(
                fn f() -> &'static str {}
            ),
            quote!(
                fn f() -> impl Sized {}
            ),
            quote!(
                fn f() -> (i32, u8) {}
            ),
        ] {
            assert!(returns_result(&parse(tokens.clone())).is_err(), "{tokens}");
        }
        for tokens in [
            quote!(
                fn f() -> Result<(), E> {}
            ),
            quote!(
                fn f() -> QueryResult<i32> {}
            ),
            quote!(
                fn f() -> std::io::Result<()> {}
            ),
            quote!(
                fn f() -> Outcome {}
            ),
            quote!(
                fn f() -> Self {}
            ),
        ] {
            assert!(returns_result(&parse(tokens.clone())).is_ok(), "{tokens}");
        }
    }

    #[test]
    fn async_and_const_are_reported_together() {
        let mut errors = Errors::default();
        let function = parse(quote!(
            const async fn f() -> R {
                x
            }
        ));
        runs_at_run_time(&function, Attribute::Atomic, &mut errors);
        let messages: Vec<String> = errors
            .finish(())
            .unwrap_err()
            .into_iter()
            .map(|error| error.to_string())
            .collect();
        assert_eq!(messages.len(), 2, "{messages:?}");
    }

    fn options_errors(args: TokenStream) -> Vec<String> {
        let mut errors = Errors::default();
        options(&AtomicArgs::parse(args).unwrap(), &mut errors);
        match errors.finish(()) {
            Ok(()) => Vec::new(),
            Err(error) => error.into_iter().map(|error| error.to_string()).collect(),
        }
    }

    #[test]
    fn durable_without_savepoint_is_refused() {
        let errors = options_errors(quote!(durable = true, savepoint = false));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(options_errors(quote!(durable = false, savepoint = false)).is_empty());
    }

    #[test]
    fn retry_needs_durable() {
        for args in [quote!(retry = 3), quote!(durable = false, retry = 3)] {
            let errors = options_errors(args.clone());
            assert_eq!(errors.len(), 1, "{args}: {errors:?}");
            assert!(
                errors[0].starts_with("`retry` reruns the whole transaction"),
                "{args}: {errors:?}"
            );
        }
        assert!(options_errors(quote!(retry = 3, durable = true)).is_empty());
    }

    #[test]
    fn contradicting_attributes_for_one_alias_are_refused() {
        let function = parse(quote!(
            #[non_atomic_requests(using = "other")]
            #[diesel_atomic::non_atomic_requests]
            #[doc = "kept"]
            fn f() -> R {
                x
            }
        ));
        let mut errors = Errors::default();
        other_attributes(&function, Attribute::Atomic, "default", &mut errors);
        let error = errors.finish(()).unwrap_err().to_string();
        assert!(
            error.contains("contradict each other for alias \"default\""),
            "{error}"
        );

        let mut errors = Errors::default();
        other_attributes(
            &function,
            Attribute::NonAtomicRequests,
            "other",
            &mut errors,
        );
        let error = errors.finish(()).unwrap_err().to_string();
        assert!(error.contains("given twice for alias \"other\""), "{error}");

        let mut errors = Errors::default();
        other_attributes(&function, Attribute::Atomic, "third", &mut errors);
        assert!(errors.is_empty());
    }
}
