//! Checks on the item an attribute is applied to, each error spanned on the part at fault.

use proc_macro2::TokenStream;
use quote::{ToTokens, quote};
use syn::visit::{self, Visit};
use syn::{FnArg, Ident, Item, ItemFn, Pat, ReturnType, Type};

use crate::args::{AtomicArgs, Attribute, Conn, Layer, ReceiverPath};
use crate::errors::Errors;
use crate::suggest;

/// How an `#[atomic]` block gets its connection.
pub(crate) enum ConnectionSource {
    /// Checked out from the alias's pool.
    Ambient,
    /// The named `&mut` parameter.
    Explicit(Ident),
    /// The receiver of a `&mut self` method, or a field of it (`conn = self.conn`).
    Receiver(ReceiverPath),
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

/// A `const fn` cannot run a block; problems go to `errors`.
pub(crate) fn runs_at_run_time(function: &ItemFn, attribute: Attribute, errors: &mut Errors) {
    let name = attribute.name();
    if let Some(constness) = &function.sig.constness {
        errors.push(syn::Error::new_spanned(
            constness,
            format!(
                "{name} cannot be applied to a `const fn`: it works at run time; remove `const`"
            ),
        ));
    }
}

/// `#[diesel_atomic::test]` makes the function a test, so it must be one the test harness can
/// call: no parameters, and no second test attribute below it (rustc's `#[test]`, or another
/// crate's such as `#[tokio::test]`, which would make it a test twice or wrap it in a second
/// runtime), nor `#[atomic]` / `#[non_atomic_requests]`, which, expanded after it, would wrap
/// the test transaction instead of running inside it. Problems go to `errors`.
pub(crate) fn test_function(function: &ItemFn, errors: &mut Errors) {
    let name = Attribute::Test.name();
    if !function.sig.inputs.is_empty() {
        errors.push(syn::Error::new_spanned(
            &function.sig.inputs,
            format!(
                "{name} needs a function without parameters: the test harness calls it with \
                 none; build what the test needs inside it, or in `setup`"
            ),
        ));
    }
    for attr in &function.attrs {
        let path = attr.path();
        let written = path.to_token_stream().to_string().replace(' ', "");
        if path
            .segments
            .last()
            .is_some_and(|last| last.ident == "test")
        {
            errors.push(syn::Error::new_spanned(
                attr,
                format!(
                    "{name} makes the function a test already (on a tokio runtime of its own \
                     for an `async fn`); remove #[{written}]"
                ),
            ));
        } else if let Some(stacked) = Attribute::from_path(path) {
            errors.push(syn::Error::new_spanned(
                attr,
                format!(
                    "{} below {name} would wrap the test transaction instead of running \
                     inside it; put {} on a function of its own and call that from the test",
                    stacked.name(),
                    stacked.name()
                ),
            ));
        }
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
/// `ambient = true` with `conn = ...` is refused: the block cannot run on both connections.
///
/// `retry` without `durable = true` is refused: after a serialization failure or a deadlock
/// the database has lost the whole transaction, so only the outermost block can be rerun, and
/// `durable = true` is how a block says it is the outermost one.
///
/// `replica = true` without `read_only = true` is refused (a replica refuses writes, and the
/// attribute should say so where it is read), and so is `replica = true` with
/// `isolation = "serializable"` (a PostgreSQL hot standby cannot run it). Both are spanned on
/// `replica`.
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
    if let (Some(ambient), Some(conn)) = (&args.ambient, &args.conn)
        && ambient.value
    {
        errors.push(syn::Error::new_spanned(
            &ambient.tokens,
            format!(
                "`ambient = true` contradicts `conn = {}`: the block runs either on that \
                 connection or on the alias's pooled one; keep one",
                conn.text()
            ),
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
    if let Some(replica) = args.replica.as_ref().filter(|replica| replica.value) {
        if !args
            .read_only
            .as_ref()
            .is_some_and(|read_only| read_only.value)
        {
            errors.push(syn::Error::new_spanned(
                &replica.key,
                "`replica = true` needs `read_only = true`: a replica refuses writes, so the \
                 block must only read; add `read_only = true`",
            ));
        }
        if args
            .isolation
            .as_ref()
            .is_some_and(|isolation| isolation.variant == "Serializable")
        {
            errors.push(syn::Error::new_spanned(
                &replica.key,
                "`replica = true` cannot be combined with `isolation = \"serializable\"`: a \
                 PostgreSQL hot standby cannot run serializable transactions; remove one of \
                 them (a serializable read runs on the primary)",
            ));
        }
    }
}

/// `replica = true` checks the block's connection out of a replica's pool: in explicit mode
/// the block would run on the caller's connection, which is not a replica. Spanned on
/// `replica`.
pub(crate) fn replica_runs_ambient(
    args: &AtomicArgs,
    source: &ConnectionSource,
) -> syn::Result<()> {
    let Some(replica) = args.replica.as_ref().filter(|replica| replica.value) else {
        return Ok(());
    };
    let connection = match source {
        ConnectionSource::Ambient => return Ok(()),
        ConnectionSource::Explicit(name) => format!("`{name}`"),
        ConnectionSource::Receiver(path) => format!("`{}`", Conn::Receiver(path.clone()).text()),
    };
    Err(syn::Error::new_spanned(
        &replica.key,
        format!(
            "`replica = true` checks the block's connection out of one of the alias's replicas, \
             so the block cannot run on {connection}, the connection passed in (it is not a \
             replica); take the connection parameter away (ambient mode: the body reaches the \
             replica with `diesel_atomic::connection`), or remove `replica = true`"
        ),
    ))
}

/// Where the block's connection is: the `conn = ...` argument, else a parameter named `conn`,
/// else (ambient mode) the alias's pool. Ambient mode is refused while a parameter or
/// `&mut self` may be the connection the body uses, unless `ambient = true` says it is meant:
/// the block would otherwise run on a pooled connection while the body writes to another one
/// in autocommit mode.
pub(crate) fn connection(function: &ItemFn, args: &AtomicArgs) -> syn::Result<ConnectionSource> {
    match &args.conn {
        Some(Conn::Parameter(wanted)) => {
            return parameter(function, &wanted.to_string(), Some(wanted));
        }
        Some(Conn::Receiver(path)) => return receiver(function, path),
        None => {}
    }
    let ambient_on_purpose = args.ambient.as_ref().filter(|ambient| ambient.value);
    match (parameter(function, "conn", None), ambient_on_purpose) {
        (Err(_) | Ok(ConnectionSource::Explicit(_)), Some(ambient)) => {
            Err(syn::Error::new_spanned(
                &ambient.tokens,
                "`ambient = true` contradicts the parameter `conn`, which the block runs on: \
                 remove `ambient = true`, or rename the parameter if the block should run on \
                 the alias's pooled connection",
            ))
        }
        (Ok(ConnectionSource::Ambient), None) => {
            refuse_unrecognised_connections(function)?;
            Ok(ConnectionSource::Ambient)
        }
        (found, _) => found,
    }
}

/// The parameter called `name`, which must be a `&mut` reference; when there is none, ambient
/// mode if nothing asked for it (`wanted` is the `conn = name` that did).
fn parameter(
    function: &ItemFn,
    name: &str,
    wanted: Option<&Ident>,
) -> syn::Result<ConnectionSource> {
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
                    parameters_hint(function, name)
                }),
            )),
            None => Ok(ConnectionSource::Ambient),
        },
    }
}

/// `conn = self.conn`: only a `&mut self` method can lend the block its connection.
fn receiver(function: &ItemFn, path: &ReceiverPath) -> syn::Result<ConnectionSource> {
    match function.sig.receiver() {
        Some(receiver) if is_mut_self(receiver) => Ok(ConnectionSource::Receiver(path.clone())),
        _ => Err(syn::Error::new_spanned(
            &path.tokens,
            format!(
                "`conn = {}` needs a method that takes `&mut self`: a transaction needs `&mut` \
                 access to its connection",
                Conn::Receiver(path.clone()).text()
            ),
        )),
    }
}

/// `&mut self`, `&'a mut self` or `self: &mut Self` (syn spells the first two as the third).
fn is_mut_self(receiver: &syn::Receiver) -> bool {
    match &*receiver.ty {
        Type::Reference(reference) => {
            reference.mutability.is_some()
                && matches!(&*reference.elem, Type::Path(path) if path.qself.is_none() && path.path.is_ident("Self"))
        }
        _ => false,
    }
}

/// In ambient mode, a parameter or `&mut self` that may be the connection the body uses is an
/// error that names the fix: one that looks like a connection first, then one the macro
/// cannot tell, then `&mut self`.
fn refuse_unrecognised_connections(function: &ItemFn) -> syn::Result<()> {
    let generics = GenericTypes::of(&function.sig.generics);
    let mut first_unknown = None;
    for input in &function.sig.inputs {
        let FnArg::Typed(typed) = input else {
            continue;
        };
        match &*typed.pat {
            Pat::Ident(pat) if pat.subpat.is_none() => {
                let Type::Reference(reference) = &*typed.ty else {
                    continue;
                };
                if reference.mutability.is_none() {
                    continue;
                }
                match generics.classify(&reference.elem) {
                    Kind::Connection => {
                        let ident = &pat.ident;
                        return Err(syn::Error::new_spanned(
                            ident,
                            format!(
                                "`{ident}` looks like a connection, but #[atomic] runs on a \
                                 parameter named `conn` (explicit mode) or checks one out of \
                                 the alias's pool (ambient mode); rename it to `conn` or write \
                                 `#[atomic(conn = {ident})]`"
                            ),
                        ));
                    }
                    Kind::Unknown => {
                        let ident = &pat.ident;
                        first_unknown.get_or_insert_with(|| {
                            syn::Error::new_spanned(
                                typed,
                                format!(
                                    "#[atomic] cannot tell whether `{ident}` is a connection: \
                                     write `#[atomic(conn = {ident})]` to run the block on it, \
                                     or `#[atomic(ambient = true)]` to run it on the alias's \
                                     pooled connection on purpose"
                                ),
                            )
                        });
                    }
                    Kind::NotConnection => {}
                }
            }
            _ => {
                if generics.may_hold_connection(&typed.ty) {
                    first_unknown.get_or_insert_with(|| {
                        syn::Error::new_spanned(
                            typed,
                            "#[atomic] cannot tell whether this parameter holds a connection: \
                             give the connection a parameter of its own and write \
                             `#[atomic(conn = name)]` to run the block on it, or write \
                             `#[atomic(ambient = true)]` to run it on the alias's pooled \
                             connection on purpose",
                        )
                    });
                }
            }
        }
    }
    if let Some(error) = first_unknown {
        return Err(error);
    }
    match function.sig.receiver() {
        Some(receiver) if is_mut_self(receiver) => Err(syn::Error::new_spanned(
            receiver,
            "#[atomic] cannot tell whether `self` holds a connection: write \
             `#[atomic(conn = self.conn)]` (with the field that holds it, or `conn = self` if \
             `self` is the connection) to run the block on it, or `#[atomic(ambient = true)]` \
             to run it on the alias's pooled connection on purpose",
        )),
        _ => Ok(()),
    }
}

/// What a type behind `&mut` may be, as far as the macro can see.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    /// Named `*Connection`, or a generic or `impl`/`dyn` type bounded by a `*Connection` trait.
    Connection,
    /// A type alias or any other type the macro cannot see into (`DbConn`, `Self`).
    Unknown,
    /// Certainly not a connection: a primitive, a standard collection, a generic parameter
    /// without a `*Connection` bound, ...
    NotConnection,
}

/// The function's own type parameters, and which of them are bounded by a `*Connection` trait.
struct GenericTypes<'a> {
    connections: Vec<&'a Ident>,
    others: Vec<&'a Ident>,
}

impl<'a> GenericTypes<'a> {
    fn of(generics: &'a syn::Generics) -> Self {
        let bounded_in_where_clause: Vec<&Ident> = generics
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
            })
            .collect();
        let (connections, others) = generics.type_params().partition(|param| {
            param.bounds.iter().any(bound_is_connection)
                || bounded_in_where_clause.contains(&&param.ident)
        });
        let idents = |params: Vec<&'a syn::TypeParam>| {
            params.into_iter().map(|param| &param.ident).collect()
        };
        GenericTypes {
            connections: idents(connections),
            others: idents(others),
        }
    }

    fn classify(&self, ty: &Type) -> Kind {
        /// Types that are never a diesel connection, by the last segment of their path.
        const NOT_CONNECTIONS: &[&str] = &[
            "bool",
            "char",
            "str",
            "i8",
            "i16",
            "i32",
            "i64",
            "i128",
            "isize",
            "u8",
            "u16",
            "u32",
            "u64",
            "u128",
            "usize",
            "f32",
            "f64",
            "String",
            "Vec",
            "VecDeque",
            "HashMap",
            "HashSet",
            "BTreeMap",
            "BTreeSet",
            "Option",
            "Cell",
            "RefCell",
            "Formatter",
        ];
        match ty {
            Type::Path(path) if path.qself.is_none() => {
                let Some(last) = path.path.segments.last() else {
                    return Kind::Unknown;
                };
                let generic = path.path.get_ident();
                if last.ident.to_string().ends_with("Connection")
                    || last.ident == "SyncConnectionWrapper"
                    || generic.is_some_and(|ident| self.connections.contains(&ident))
                {
                    Kind::Connection
                } else if generic.is_some_and(|ident| self.others.contains(&ident))
                    || NOT_CONNECTIONS.iter().any(|name| last.ident == name)
                {
                    Kind::NotConnection
                } else {
                    Kind::Unknown
                }
            }
            Type::ImplTrait(bounds) if bounds.bounds.iter().any(bound_is_connection) => {
                Kind::Connection
            }
            Type::TraitObject(bounds) if bounds.bounds.iter().any(bound_is_connection) => {
                Kind::Connection
            }
            Type::ImplTrait(_)
            | Type::TraitObject(_)
            | Type::Ptr(_)
            | Type::BareFn(_)
            | Type::Never(_)
            | Type::Infer(_) => Kind::NotConnection,
            Type::Reference(reference) => self.classify(&reference.elem),
            Type::Paren(inner) => self.classify(&inner.elem),
            Type::Group(inner) => self.classify(&inner.elem),
            // A collection of connections is not a connection, but the body may still use one
            // of them: only a collection of things that are not connections is certainly fine.
            Type::Slice(slice) => self.contents(std::iter::once(&*slice.elem)),
            Type::Array(array) => self.contents(std::iter::once(&*array.elem)),
            Type::Tuple(tuple) => self.contents(tuple.elems.iter()),
            _ => Kind::Unknown,
        }
    }

    fn contents<'t>(&self, types: impl IntoIterator<Item = &'t Type>) -> Kind {
        if types
            .into_iter()
            .all(|ty| self.classify(ty) == Kind::NotConnection)
        {
            Kind::NotConnection
        } else {
            Kind::Unknown
        }
    }

    /// Whether a parameter of this type, bound by a pattern rather than a name, may hold a
    /// connection: a `&mut` to something not certainly a connection anywhere in it.
    fn may_hold_connection(&self, ty: &Type) -> bool {
        match ty {
            Type::Reference(reference) => {
                (reference.mutability.is_some()
                    && self.classify(&reference.elem) != Kind::NotConnection)
                    || self.may_hold_connection(&reference.elem)
            }
            Type::Paren(inner) => self.may_hold_connection(&inner.elem),
            Type::Group(inner) => self.may_hold_connection(&inner.elem),
            Type::Slice(slice) => self.may_hold_connection(&slice.elem),
            Type::Array(array) => self.may_hold_connection(&array.elem),
            Type::Tuple(tuple) => tuple.elems.iter().any(|ty| self.may_hold_connection(ty)),
            Type::Path(path) => path
                .path
                .segments
                .iter()
                .any(|segment| match &segment.arguments {
                    syn::PathArguments::AngleBracketed(arguments) => {
                        arguments.args.iter().any(|argument| match argument {
                            syn::GenericArgument::Type(ty) => self.may_hold_connection(ty),
                            _ => false,
                        })
                    }
                    _ => false,
                }),
            _ => false,
        }
    }
}

/// The block needs its connection after the body returns, to COMMIT, so the function cannot
/// return a borrow of it; without this check, rustc reports a lifetime error about a closure
/// the user never wrote. A borrow is recognised by the connection's lifetime named in the
/// return type (and by no other parameter), or by an elided lifetime there when the
/// connection's is the only one elision can pick.
pub(crate) fn returns_no_borrow_of_connection(
    function: &ItemFn,
    source: &ConnectionSource,
) -> syn::Result<()> {
    let ReturnType::Type(_, output) = &function.sig.output else {
        return Ok(());
    };
    let inputs = &function.sig.inputs;
    let (connection, reference) = match source {
        ConnectionSource::Ambient => return Ok(()),
        ConnectionSource::Explicit(name) => {
            let found = inputs.iter().find_map(|input| match input {
                FnArg::Typed(typed) => match (&*typed.pat, &*typed.ty) {
                    (Pat::Ident(pat), Type::Reference(reference)) if pat.ident == *name => {
                        Some((input, reference))
                    }
                    _ => None,
                },
                FnArg::Receiver(_) => None,
            });
            match found {
                Some(found) => found,
                None => return Ok(()),
            }
        }
        ConnectionSource::Receiver(_) => {
            let found = inputs.iter().find_map(|input| match input {
                FnArg::Receiver(receiver) => match &*receiver.ty {
                    Type::Reference(reference) => Some((input, reference)),
                    _ => None,
                },
                FnArg::Typed(_) => None,
            });
            match found {
                Some(found) => found,
                None => return Ok(()),
            }
        }
    };
    let others = inputs
        .iter()
        .filter(|input| !std::ptr::eq(*input, connection));
    match &reference.lifetime {
        Some(lifetime) if lifetime.ident != "_" && lifetime.ident != "static" => {
            let shared = others.into_iter().any(|input| {
                let mut lifetimes = Lifetimes::default();
                lifetimes.visit_fn_arg(input);
                lifetimes
                    .named
                    .iter()
                    .any(|named| named.ident == lifetime.ident)
            });
            let mut in_output = Lifetimes::default();
            in_output.visit_type(output);
            match in_output
                .named
                .iter()
                .find(|named| named.ident == lifetime.ident)
            {
                Some(borrowed) if !shared => Err(syn::Error::new_spanned(
                    borrowed,
                    borrow_of_connection(source, false),
                )),
                _ => Ok(()),
            }
        }
        Some(lifetime) if lifetime.ident == "static" => Ok(()),
        // Elided (or `'_`): the output's elided lifetimes are the connection's when it is the
        // only borrowed input, and always the receiver's for a method.
        _ => {
            let mut in_connection = Lifetimes::default();
            in_connection.visit_type(&reference.elem);
            let only_borrow = matches!(source, ConnectionSource::Receiver(_))
                || (function.sig.receiver().is_none()
                    && in_connection.is_empty()
                    && others.into_iter().all(|input| {
                        let mut lifetimes = Lifetimes::default();
                        lifetimes.visit_fn_arg(input);
                        lifetimes.is_empty()
                    }));
            let mut in_output = Lifetimes::default();
            in_output.visit_type(output);
            match in_output.elided.first() {
                Some(elided) if only_borrow => Err(syn::Error::new_spanned(
                    elided,
                    borrow_of_connection(source, true),
                )),
                _ => Ok(()),
            }
        }
    }
}

/// "... cannot return a borrow of its connection ...", saying whose lifetime an elided one is.
fn borrow_of_connection(source: &ConnectionSource, elided: bool) -> String {
    const WHY: &str = "the block needs the connection after the body returns, to COMMIT; return \
                       owned values instead";
    match source {
        ConnectionSource::Explicit(name) if elided => format!(
            "an #[atomic] function cannot return a borrow of its connection `{name}` (the \
             lifetime elided here is `{name}`'s, the only borrowed parameter): {WHY}"
        ),
        ConnectionSource::Explicit(name) => format!(
            "an #[atomic] function cannot return a borrow of its connection `{name}`: {WHY}"
        ),
        _ => format!(
            "an #[atomic] method cannot return a borrow of `self`, which holds its connection: \
             {WHY}"
        ),
    }
}

/// The lifetimes a type or parameter mentions: named ones, and where one is elided (a `&`
/// without a lifetime, or `'_`). Function pointer types and `Fn(..)` sugar have their own
/// elision scope, so what they contain does not count.
#[derive(Default)]
struct Lifetimes {
    named: Vec<syn::Lifetime>,
    elided: Vec<TokenStream>,
}

impl Lifetimes {
    fn is_empty(&self) -> bool {
        self.named.is_empty() && self.elided.is_empty()
    }
}

impl<'ast> Visit<'ast> for Lifetimes {
    fn visit_lifetime(&mut self, lifetime: &'ast syn::Lifetime) {
        if lifetime.ident == "_" {
            self.elided.push(lifetime.to_token_stream());
        } else {
            self.named.push(lifetime.clone());
        }
    }

    fn visit_type_reference(&mut self, reference: &'ast syn::TypeReference) {
        if reference.lifetime.is_none() {
            self.elided.push(reference.to_token_stream());
        }
        visit::visit_type_reference(self, reference);
    }

    fn visit_type_bare_fn(&mut self, _: &'ast syn::TypeBareFn) {}

    fn visit_parenthesized_generic_arguments(
        &mut self,
        _: &'ast syn::ParenthesizedGenericArguments,
    ) {
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

/// diesel's sync connections in an `async fn`, and diesel-async's in a sync one: the block
/// would not compile against the runner, with a message about trait bounds; this one says
/// which connection the function needs. Spanned on the parameter's type.
pub(crate) fn connection_matches_asyncness(
    function: &ItemFn,
    source: &ConnectionSource,
) -> syn::Result<()> {
    const SYNC: &[&str] = &["PgConnection", "MysqlConnection", "SqliteConnection"];
    const ASYNC: &[&str] = &[
        "AsyncPgConnection",
        "AsyncMysqlConnection",
        "SyncConnectionWrapper",
    ];
    let ConnectionSource::Explicit(name) = source else {
        return Ok(());
    };
    let ty = function.sig.inputs.iter().find_map(|input| match input {
        FnArg::Typed(typed) => match &*typed.pat {
            Pat::Ident(pat) if pat.ident == *name => Some(&*typed.ty),
            _ => None,
        },
        FnArg::Receiver(_) => None,
    });
    let Some(Type::Reference(reference)) = ty else {
        return Ok(());
    };
    let Type::Path(path) = &*reference.elem else {
        return Ok(());
    };
    let Some(last) = path.path.segments.last() else {
        return Ok(());
    };
    let is_async = function.sig.asyncness.is_some();
    if is_async && SYNC.iter().any(|sync| last.ident == sync) {
        return Err(syn::Error::new_spanned(
            &reference.elem,
            format!(
                "#[atomic] async fn needs a diesel-async connection, and `{}` is diesel's \
                 synchronous one: take `&mut AsyncPgConnection`, `&mut AsyncMysqlConnection` or \
                 `&mut SyncConnectionWrapper<SqliteConnection>` (feature `async`), or make the \
                 function synchronous",
                last.ident
            ),
        ));
    }
    if !is_async && ASYNC.iter().any(|known| last.ident == known) {
        return Err(syn::Error::new_spanned(
            &reference.elem,
            format!(
                "`{}` is a diesel-async connection, whose queries are awaited: make this an \
                 `async fn` (the block then runs on diesel-async), or take diesel's synchronous \
                 connection",
                last.ident
            ),
        ));
    }
    Ok(())
}

/// Stacked attributes must not contradict or repeat each other for one alias; each later one
/// that does is reported, on that attribute, against the first one for its alias.
pub(crate) fn distinct_aliases(layers: &[Layer], errors: &mut Errors) {
    for (index, later) in layers.iter().enumerate() {
        let alias = later.args.alias();
        let Some(earlier) = layers[..index]
            .iter()
            .find(|earlier| earlier.args.alias() == alias)
        else {
            continue;
        };
        let Some(written) = &later.written else {
            continue;
        };
        let (this, other) = (earlier.args.attribute(), later.args.attribute());
        let message = if other == this {
            let why = match this {
                Attribute::Atomic => {
                    " (the inner block would only be a savepoint of the outer one)"
                }
                Attribute::NonAtomicRequests | Attribute::Test => "",
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
        errors.push(syn::Error::new_spanned(written, message));
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
        let args = match wanted {
            Some(wanted) => quote!(conn = #wanted),
            None => quote!(),
        };
        connection_error_with(tokens, args)
    }

    fn connection_error_with(tokens: TokenStream, args: TokenStream) -> String {
        match connection(&parse(tokens), &AtomicArgs::parse(args).unwrap()) {
            Ok(_) => String::new(),
            Err(error) => error.to_string(),
        }
    }

    fn source(tokens: TokenStream, args: TokenStream) -> ConnectionSource {
        match connection(&parse(tokens.clone()), &AtomicArgs::parse(args).unwrap()) {
            Ok(source) => source,
            Err(error) => panic!("{tokens}: {error}"),
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
    fn mut_parameters_that_are_certainly_not_connections_keep_ambient_mode() {
        for parameters in [
            quote!(buffer: &mut Vec<u8>),
            quote!(text: &mut String),
            quote!(text: &mut str),
            quote!(bytes: &mut [u8]),
            quote!(bytes: &mut [u8; 4]),
            quote!(pair: &mut (u8, bool)),
            quote!(unit: &mut ()),
            quote!(map: &mut std::collections::HashMap<String, Vec<u8>>),
            quote!(set: &mut BTreeSet<u32>),
            quote!(queue: &mut VecDeque<u8>),
            quote!(f: &mut fmt::Formatter<'_>),
            quote!(slot: &mut Option<u8>),
            quote!(cell: &mut RefCell<u8>),
            quote!(name: &mut &str),
            quote!(items: &mut impl Iterator<Item = u8>),
            quote!(out: &mut dyn std::io::Write),
            quote!(value: &mut T),
            quote!(shown: &mut D),
            quote!(owned: DbConn),
            quote!(shared: &DbConn),
            quote!((a, b): (&mut u8, &mut String)),
            quote!(Wrapper(inner): Wrapper),
        ] {
            let function = quote!(
                fn f<T, D: Display>(#parameters) -> R {
                    x
                }
            );
            assert!(
                matches!(source(function, quote!()), ConnectionSource::Ambient),
                "{parameters}"
            );
        }
    }

    #[test]
    fn mut_parameters_that_may_be_connections_are_refused() {
        for (parameters, name) in [
            (quote!(db: &mut DbConn), "db"),
            (quote!(db: &mut MyConn), "db"),
            (quote!(mut db: &mut db::Conn), "db"),
            (quote!(this: &mut Self), "this"),
            (quote!(db: &mut <T as Backend>::Conn), "db"),
            (quote!(db: &mut &mut DbConn), "db"),
            (quote!(pool: &mut [DbConn]), "pool"),
            (quote!(pair: &mut (u8, DbConn)), "pair"),
            (quote!(db: &mut Box<DbConn>), "db"),
        ] {
            let error = connection_error(
                quote!(
                    fn f(id: u8, #parameters) -> R {
                        x
                    }
                ),
                None,
            );
            assert_eq!(
                error,
                format!(
                    "#[atomic] cannot tell whether `{name}` is a connection: write \
                     `#[atomic(conn = {name})]` to run the block on it, or \
                     `#[atomic(ambient = true)]` to run it on the alias's pooled connection on \
                     purpose"
                ),
                "{parameters}"
            );
        }
    }

    #[test]
    fn patterns_that_may_hold_a_connection_are_refused() {
        for parameters in [
            quote!((id, db): (u8, &mut DbConn)),
            quote!((id, db): (u8, &mut SqliteConnection)),
            quote!([a, b]: [&mut DbConn; 2]),
            quote!(Pair(a, b): Pair<&mut DbConn>),
            quote!(_: &mut DbConn),
            quote!(&mut db: &mut &mut DbConn),
        ] {
            let error = connection_error(
                quote!(
                    fn f(#parameters) -> R {
                        x
                    }
                ),
                None,
            );
            assert!(
                error.starts_with(
                    "#[atomic] cannot tell whether this parameter holds a connection: give the \
                     connection a parameter of its own and write `#[atomic(conn = name)]`"
                ),
                "{parameters}: {error}"
            );
        }
    }

    #[test]
    fn mut_self_in_ambient_mode_is_refused() {
        for receiver in [
            quote!(&mut self),
            quote!(&'a mut self),
            quote!(self: &mut Self),
        ] {
            let error = connection_error(
                quote!(
                    fn f(#receiver, id: u8) -> R {
                        x
                    }
                ),
                None,
            );
            assert!(
                error.starts_with(
                    "#[atomic] cannot tell whether `self` holds a connection: write \
                     `#[atomic(conn = self.conn)]`"
                ),
                "{receiver}: {error}"
            );
        }
        for receiver in [
            quote!(&self),
            quote!(self),
            quote!(mut self),
            quote!(self: Box<Self>),
        ] {
            let function = quote!(
                fn f(#receiver, id: u8) -> R {
                    x
                }
            );
            assert!(
                matches!(source(function, quote!()), ConnectionSource::Ambient),
                "{receiver}"
            );
        }
        // With a connection parameter, `&mut self` is just the receiver.
        let function = quote!(
            fn f(&mut self, conn: &mut DbConn) -> R {
                x
            }
        );
        assert!(matches!(
            source(function, quote!()),
            ConnectionSource::Explicit(_)
        ));
    }

    #[test]
    fn ambient_true_runs_ambient_on_purpose() {
        let function = quote!(
            fn f(&mut self, db: &mut DbConn, (a, b): (u8, &mut X), c: &mut SqliteConnection) -> R {
                x
            }
        );
        assert!(matches!(
            source(function, quote!(ambient = true)),
            ConnectionSource::Ambient
        ));
        let error = connection_error_with(
            quote!(
                fn f(db: &mut DbConn) -> R {
                    x
                }
            ),
            quote!(ambient = false),
        );
        assert!(error.starts_with("#[atomic] cannot tell"), "{error}");
    }

    #[test]
    fn ambient_true_contradicts_a_conn_parameter() {
        for parameters in [quote!(conn: &mut DbConn), quote!(conn: &DbConn)] {
            let error = connection_error_with(
                quote!(
                    fn f(#parameters) -> R {
                        x
                    }
                ),
                quote!(ambient = true),
            );
            assert!(
                error.starts_with("`ambient = true` contradicts the parameter `conn`"),
                "{parameters}: {error}"
            );
        }
        let errors = options_errors(quote!(ambient = true, conn = self.db));
        assert_eq!(
            errors,
            [
                "`ambient = true` contradicts `conn = self.db`: the block runs either on that \
              connection or on the alias's pooled one; keep one"
                    .to_owned()
            ]
        );
        assert!(options_errors(quote!(ambient = false, conn = db)).is_empty());
    }

    #[test]
    fn conn_self_needs_a_mut_self_method() {
        for receiver in [
            quote!(&mut self),
            quote!(&'a mut self),
            quote!(self: &mut Self),
        ] {
            for args in [
                quote!(conn = self.conn),
                quote!(conn = self),
                quote!(conn = self.a.0),
            ] {
                let function = quote!(
                    fn f(#receiver) -> R {
                        x
                    }
                );
                assert!(
                    matches!(
                        source(function, args.clone()),
                        ConnectionSource::Receiver(_)
                    ),
                    "{receiver} {args}"
                );
            }
        }
        for receiver in [
            quote!(&self,),
            quote!(self,),
            quote!(self: Box<Self>,),
            quote!(),
        ] {
            let error = connection_error_with(
                quote!(
                    fn f(#receiver id: u8) -> R {
                        x
                    }
                ),
                quote!(conn = self.db),
            );
            assert_eq!(
                error,
                "`conn = self.db` needs a method that takes `&mut self`: a transaction needs \
                 `&mut` access to its connection",
                "{receiver}"
            );
        }
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

    fn borrow_error(tokens: TokenStream, args: TokenStream) -> String {
        let function = parse(tokens);
        let args = AtomicArgs::parse(args).unwrap();
        let source = connection(&function, &args).unwrap();
        match returns_no_borrow_of_connection(&function, &source) {
            Ok(()) => String::new(),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn returning_a_borrow_of_the_connection_is_refused() {
        let named = "an #[atomic] function cannot return a borrow of its connection `conn`: the \
                     block needs the connection after the body returns, to COMMIT; return owned \
                     values instead";
        let elided = "an #[atomic] function cannot return a borrow of its connection `conn` (the \
                      lifetime elided here is `conn`'s, the only borrowed parameter): the block \
                      needs the connection after the body returns, to COMMIT; return owned \
                      values instead";
        let receiver = "an #[atomic] method cannot return a borrow of `self`, which holds its \
                        connection: the block needs the connection after the body returns, to \
                        COMMIT; return owned values instead";
        for (signature, args, expected) in [
            (
                quote!(fn f<'a>(conn: &'a mut C) -> QueryResult<&'a mut C>),
                quote!(),
                named,
            ),
            (
                quote!(fn f<'a>(n: u8, conn: &'a mut C) -> QueryResult<Rows<'a>>),
                quote!(),
                named,
            ),
            (
                quote!(fn f(conn: &mut C) -> QueryResult<Vec<&str>>),
                quote!(),
                elided,
            ),
            (
                quote!(fn f(conn: &mut C, n: u32) -> QueryResult<Prepared<'_>>),
                quote!(),
                elided,
            ),
            (
                quote!(fn f(conn: &'_ mut C) -> QueryResult<&u8>),
                quote!(),
                elided,
            ),
            (
                quote!(fn f(&mut self) -> QueryResult<&str>),
                quote!(conn = self.conn),
                receiver,
            ),
            (
                quote!(fn f<'a>(&'a mut self, n: &u8) -> QueryResult<&'a str>),
                quote!(conn = self),
                receiver,
            ),
        ] {
            assert_eq!(
                borrow_error(quote!(#signature { x }), args.clone()),
                expected,
                "{signature}"
            );
        }
    }

    #[test]
    fn returning_other_borrows_is_fine() {
        for (signature, args) in [
            (
                quote!(fn f<'a, 'b>(conn: &'a mut C, text: &'b str) -> QueryResult<&'b str>),
                quote!(),
            ),
            // The same lifetime on another parameter: the body may return that one.
            (
                quote!(fn f<'a>(conn: &'a mut C, text: &'a str) -> QueryResult<&'a str>),
                quote!(),
            ),
            (
                quote!(fn f<'a>(conn: &mut C, text: &'a str) -> QueryResult<&'a str>),
                quote!(),
            ),
            (
                quote!(fn f(&self, conn: &mut C) -> QueryResult<&str>),
                quote!(),
            ),
            // Ambiguous elision is rustc's own error (E0106).
            (
                quote!(fn f(conn: &mut C, text: &str) -> QueryResult<&str>),
                quote!(),
            ),
            (
                quote!(fn f(conn: &mut C) -> QueryResult<fn(&str) -> &str>),
                quote!(),
            ),
            (
                quote!(fn f(conn: &mut C) -> QueryResult<Box<dyn Fn(&str) -> &str>>),
                quote!(),
            ),
            (
                quote!(fn f(conn: &mut C) -> QueryResult<&'static str>),
                quote!(),
            ),
            (
                quote!(fn f(conn: &'static mut C) -> QueryResult<&'static str>),
                quote!(),
            ),
            (
                quote!(fn f<'b>(&mut self, text: &'b str) -> QueryResult<&'b str>),
                quote!(conn = self.conn),
            ),
            (quote!(fn f(text: &str) -> Result<&str, E>), quote!()),
        ] {
            assert_eq!(
                borrow_error(quote!(#signature { x }), args.clone()),
                "",
                "{signature}"
            );
        }
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
    fn const_is_refused_and_async_is_not() {
        let function = parse(quote!(
            const async fn f() -> R {
                x
            }
        ));
        for attribute in [Attribute::Atomic, Attribute::NonAtomicRequests] {
            let mut errors = Errors::default();
            runs_at_run_time(&function, attribute, &mut errors);
            let messages: Vec<String> = errors
                .finish(())
                .unwrap_err()
                .into_iter()
                .map(|error| error.to_string())
                .collect();
            assert_eq!(messages.len(), 1, "{messages:?}");
            assert!(messages[0].contains("const fn"), "{messages:?}");
        }
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

    fn layers(item: TokenStream, first: Attribute, first_args: TokenStream) -> Vec<Layer> {
        let mut function = parse(item);
        let mut layers = vec![Layer {
            args: crate::args::AttributeArgs::parse(first, first_args).unwrap(),
            written: None,
        }];
        for stacked in crate::args::take_stacked(&mut function.attrs) {
            layers.push(Layer {
                args: crate::args::AttributeArgs::parse(stacked.attribute, stacked.args).unwrap(),
                written: Some(stacked.written),
            });
        }
        layers
    }

    fn alias_errors(layers: &[Layer]) -> Vec<String> {
        let mut errors = Errors::default();
        distinct_aliases(layers, &mut errors);
        match errors.finish(()) {
            Ok(()) => Vec::new(),
            Err(error) => error.into_iter().map(|error| error.to_string()).collect(),
        }
    }

    #[test]
    fn contradicting_attributes_for_one_alias_are_refused() {
        let item = quote!(
            #[non_atomic_requests(using = "other")]
            #[diesel_atomic::non_atomic_requests]
            #[doc = "kept"]
            fn f() -> R {
                x
            }
        );
        let errors = alias_errors(&layers(item.clone(), Attribute::Atomic, quote!()));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with(
                "#[atomic] and #[non_atomic_requests] contradict each other for alias \"default\""
            ),
            "{errors:?}"
        );

        let errors = alias_errors(&layers(
            item.clone(),
            Attribute::NonAtomicRequests,
            quote!(using = "other"),
        ));
        assert_eq!(
            errors,
            ["#[non_atomic_requests] is given twice for alias \"other\"; keep one".to_owned()]
        );

        let errors = alias_errors(&layers(item, Attribute::Atomic, quote!(using = "third")));
        assert!(errors.is_empty(), "{errors:?}");
    }

    #[test]
    fn a_repeated_alias_is_reported_once_per_attribute() {
        let item = quote!(
            #[atomic(savepoint = false)]
            #[atomic(using = "other")]
            #[atomic]
            fn f() -> R {
                x
            }
        );
        let errors = alias_errors(&layers(item, Attribute::Atomic, quote!()));
        assert_eq!(
            errors,
            [
                "#[atomic] is given twice for alias \"default\" (the inner block would only be a \
                 savepoint of the outer one); keep one",
                "#[atomic] is given twice for alias \"default\" (the inner block would only be a \
                 savepoint of the outer one); keep one",
            ]
        );
    }
}
