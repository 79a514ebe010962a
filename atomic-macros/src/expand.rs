//! Code generation: the function keeps its signature; only its body is wrapped.

use proc_macro2::{Ident, Span, TokenStream, TokenTree};
use quote::{ToTokens, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{ItemFn, ReturnType, Signature, Type};

use crate::args::{
    self, Alias, AtomicArgs, Attribute, AttributeArgs, Layer, NonAtomicRequestsArgs, ReceiverPath,
    Stacked, TestArgs,
};
use crate::errors::Errors;
use crate::rename_self;
use crate::valid::{self, ConnectionSource};

/// `#[atomic(args)] item`.
pub(crate) fn atomic(args: TokenStream, item: TokenStream) -> TokenStream {
    expand(Attribute::Atomic, args, item)
}

/// `#[non_atomic_requests(args)] item`.
pub(crate) fn non_atomic_requests(args: TokenStream, item: TokenStream) -> TokenStream {
    expand(Attribute::NonAtomicRequests, args, item)
}

/// `#[diesel_atomic::test(args)] item`: a `#[test]` whose body runs inside a test
/// transaction on every alias of the test's registry, rolled back at its end. On any error,
/// the item unchanged plus the errors.
pub(crate) fn test(args: TokenStream, item: TokenStream) -> TokenStream {
    match try_expand_test(args, item.clone()) {
        Ok(expanded) => expanded,
        Err(error) => {
            let mut fallback = item;
            fallback.extend(error.into_compile_error());
            fallback
        }
    }
}

fn try_expand_test(args: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let mut errors = Errors::default();
    let args = errors.keep(TestArgs::parse(args));
    let Some(function) = errors.keep(valid::function(item, Attribute::Test)) else {
        return errors.finish(TokenStream::new());
    };
    valid::runs_at_run_time(&function, Attribute::Test, &mut errors);
    valid::test_function(&function, &mut errors);
    match errors.finish(args)? {
        Some(args) => Ok(generate_test(function, &args)),
        // `keep` recorded why, so `finish` returned it.
        None => Ok(TokenStream::new()),
    }
}

/// The test function, made a `#[test]` (rustc's, by its absolute path, so that a `test` of the
/// user's cannot stand in), its body handed to the runtime as a closure (an `async` block for
/// an `async fn`, which becomes a plain `fn`: the runtime brings the executor).
fn generate_test(function: ItemFn, args: &TestArgs) -> TokenStream {
    let (attrs, vis, mut sig, block) = split(function);
    let span = return_span(&sig);
    let krate = runtime_path(args.krate.as_ref(), span);
    // A test without a return type returns `()`: said to the closure too, so that a tail
    // expression of another type is reported at that expression.
    let body = match &sig.output {
        ReturnType::Default => {
            let mut unit = sig.clone();
            unit.output = syn::parse_quote_spanned!(span=> -> ());
            body_with_fake_return(&unit, block)
        }
        ReturnType::Type(..) => body_with_fake_return(&sig, block),
    };
    // Spanned on the path, so that a function of the wrong type is reported there.
    let setup = match &args.setup {
        Some(path) => quote_spanned!(path.span()=> ::core::option::Option::Some(#path)),
        None => quote_spanned!(span=> ::core::option::Option::None),
    };
    let transaction = args.transaction.as_ref().is_none_or(|flag| flag.value);
    let options = quote_spanned! {span=>
        #krate::__private::TestOptions {
            setup: #setup,
            transaction: #transaction,
        }
    };
    let call = match sig.asyncness.take() {
        // Spanned on `async`: without the `async` feature, the error is reported there.
        Some(asyncness) => {
            let run = quote_spanned!(asyncness.span=> #krate::__private::aio::run_test);
            quote_spanned!(span=> #run(#options, async move #body))
        }
        None => quote_spanned!(span=> #krate::__private::run_test(#options, || #body)),
    };
    quote! {
        #[::core::prelude::v1::test]
        #(#attrs)*
        #vis #sig {
            #call
        }
    }
}

/// Either attribute, together with the ones of ours written below it on the same function:
/// the expansion takes them over so that they nest in reading order, the first-written
/// outermost, as Python's decorators do. (Left to rustc, each would expand on its own and
/// wrap the blocks above it: the last-written outermost.)
fn expand(attribute: Attribute, args: TokenStream, item: TokenStream) -> TokenStream {
    match try_expand(attribute, args, item.clone()) {
        Ok(expanded) => expanded,
        Err(error) => {
            let mut fallback = without_stacked_attributes(item);
            fallback.extend(error.into_compile_error());
            fallback
        }
    }
}

/// On any error: the item unchanged plus the errors, so the user sees the precise messages
/// and nothing else (callers of the function still type-check against its signature). Our
/// attributes below this one are left out: they were checked with it, and would report the
/// same problems again.
fn without_stacked_attributes(item: TokenStream) -> TokenStream {
    match syn::parse2::<ItemFn>(item.clone()) {
        Ok(mut function) => {
            let stacked = args::take_stacked(&mut function.attrs);
            let uses = uses_of(&stacked);
            if let Ok(uses) = syn::parse2::<syn::Block>(quote!({ #uses })) {
                function.block.stmts.splice(0..0, uses.stmts);
            }
            function.into_token_stream()
        }
        Err(_) => item,
    }
}

/// `use path as _;` for each attribute taken over: rustc never resolves their paths, and
/// would otherwise call the user's `use diesel_atomic::non_atomic_requests` unused.
fn uses_of(stacked: &[Stacked]) -> TokenStream {
    let paths = stacked.iter().map(|stacked| stacked.written.path());
    quote! {
        #(
            #[allow(unused_imports)]
            use #paths as _;
        )*
    }
}

/// What one `#[atomic]` or `#[non_atomic_requests]` wraps around the body, checked.
enum Wrapper {
    Atomic {
        args: Box<AtomicArgs>,
        source: ConnectionSource,
    },
    NonAtomicRequests(NonAtomicRequestsArgs),
}

fn try_expand(
    attribute: Attribute,
    args: TokenStream,
    item: TokenStream,
) -> syn::Result<TokenStream> {
    let mut errors = Errors::default();
    let first = errors.keep(AttributeArgs::parse(attribute, args));
    let Some(mut function) = errors.keep(valid::function(item, attribute)) else {
        return errors.finish(TokenStream::new());
    };
    let stacked = args::take_stacked(&mut function.attrs);
    let uses = uses_of(&stacked);
    let any_atomic = attribute == Attribute::Atomic
        || stacked
            .iter()
            .any(|stacked| stacked.attribute == Attribute::Atomic);
    let mut layers: Vec<Layer> = first
        .map(|args| Layer {
            args,
            written: None,
        })
        .into_iter()
        .collect();
    for stacked in stacked {
        if let Some(args) = errors.keep(AttributeArgs::parse(stacked.attribute, stacked.args)) {
            layers.push(Layer {
                args,
                written: Some(stacked.written),
            });
        }
    }
    let arguments_parsed = errors.is_empty();
    // Checks on the signature alone are made even when the arguments are wrong.
    valid::runs_at_run_time(&function, attribute, &mut errors);
    if any_atomic {
        errors.keep(valid::returns_result(&function));
    }
    if !arguments_parsed {
        return errors.finish(TokenStream::new());
    }
    valid::distinct_aliases(&layers, &mut errors);
    let mut wrappers = Vec::with_capacity(layers.len());
    for layer in layers {
        match layer.args {
            AttributeArgs::Atomic(args) => {
                valid::options(&args, &mut errors);
                // The checks of the function itself are reported once for several blocks.
                let source = errors.keep_once(valid::connection(&function, &args));
                if let Some(source) = source {
                    errors.keep(valid::replica_runs_ambient(&args, &source));
                    errors.keep_once(valid::returns_no_borrow_of_connection(&function, &source));
                    errors.keep_once(valid::connection_matches_asyncness(&function, &source));
                    wrappers.push(Wrapper::Atomic { args, source });
                }
            }
            AttributeArgs::NonAtomicRequests(args) => {
                wrappers.push(Wrapper::NonAtomicRequests(args));
            }
        }
    }
    errors.finish(())?;
    Ok(generate(function, &wrappers, uses))
}

/// The function with its body inside the blocks, the first one outermost.
fn generate(function: ItemFn, wrappers: &[Wrapper], uses: TokenStream) -> TokenStream {
    let (attrs, vis, sig, mut block) = split(function);
    let lends_self = |wrapper: &Wrapper| {
        matches!(
            wrapper,
            Wrapper::Atomic {
                source: ConnectionSource::Receiver(_),
                ..
            }
        )
    };
    if wrappers.iter().any(lends_self) {
        rename_self::rename_self(&mut block);
    }
    let span = return_span(&sig);
    let mut inner = body_with_fake_return(&sig, block);
    for (index, wrapper) in wrappers.iter().enumerate().rev() {
        inner = match wrapper {
            Wrapper::Atomic { args, source } => {
                let inside_self_block = wrappers[..index].iter().any(lends_self);
                if sig.asyncness.is_some() {
                    async_atomic_call(args, source, inside_self_block, inner, span)
                } else {
                    atomic_call(args, source, inside_self_block, inner, span)
                }
            }
            Wrapper::NonAtomicRequests(args) => {
                non_atomic_requests_call(args, inner, sig.asyncness.is_some(), span)
            }
        };
    }
    let check = wrappers.iter().find_map(|wrapper| match wrapper {
        Wrapper::Atomic { args, .. } => {
            let krate = runtime_path(args.krate.as_ref(), span);
            Some(error_type_check(&sig, &krate, span))
        }
        Wrapper::NonAtomicRequests(_) => None,
    });
    quote! {
        #(#attrs)*
        #vis #sig {
            #uses
            #check
            #inner
        }
    }
}

/// `&Options { .. }`: the block's options, as the runners take them.
fn block_options(args: &AtomicArgs, krate: &TokenStream, span: Span) -> TokenStream {
    let using = Alias::literal(args.using.as_ref());
    let savepoint = args.savepoint.as_ref().is_none_or(|flag| flag.value);
    let durable = args.durable.as_ref().is_some_and(|flag| flag.value);
    let begin = begin_options(args, krate, span);
    quote_spanned! {span=>
        &#krate::__private::Options {
            using: #using,
            savepoint: #savepoint,
            durable: #durable,
            begin: #begin,
        }
    }
}

/// One `#[atomic]` block around `body` (the function's body, or the blocks inside this one).
/// `inside_self_block`: an outer block already holds `self` and passes it on as
/// `__atomic_self`.
fn atomic_call(
    args: &AtomicArgs,
    source: &ConnectionSource,
    inside_self_block: bool,
    body: TokenStream,
    span: Span,
) -> TokenStream {
    let krate = runtime_path(args.krate.as_ref(), span);
    let options = block_options(args, &krate, span);
    let receiver = Ident::new(rename_self::RECEIVER, span);
    match (source, &args.retry) {
        (ConnectionSource::Ambient, None) => quote_spanned! {span=>
            #krate::__private::run_ambient(#options, || #body)
        },
        (ConnectionSource::Explicit(conn), None) => quote_spanned! {span=>
            #krate::__private::run_explicit(#options, #conn, |#conn| #body)
        },
        // The block holds `self` and reaches the connection through `field` whenever it needs
        // it; the body gets `self` back as `__atomic_self`.
        (ConnectionSource::Receiver(path), None) => {
            let owner = owner(path, inside_self_block, span);
            let field = field_accessor(path, &quote!(#krate::__private));
            quote_spanned! {span=>
                #krate::__private::run_explicit_field(#options, #owner, #field, |#receiver| #body)
            }
        }
        // The body runs once per attempt, so it is an `FnMut` closure. The closure's tokens are
        // spanned on the `retry` key: when the body moves a captured parameter out, rustc's
        // "captured by this `FnMut` closure" points at the `retry` that made it `FnMut`.
        (ConnectionSource::Ambient, Some(retry)) => {
            let retries = &retry.retries;
            let closure = quote_spanned!(retry.key.span()=> ||);
            quote_spanned! {span=>
                #krate::__private::run_ambient_retry(
                    #options,
                    #krate::RetryPolicy::new(#retries),
                    #closure #body,
                )
            }
        }
        (ConnectionSource::Explicit(conn), Some(retry)) => {
            let retries = &retry.retries;
            let closure = quote_spanned!(retry.key.span()=> |#conn|);
            quote_spanned! {span=>
                #krate::__private::run_explicit_retry(
                    #options,
                    #krate::RetryPolicy::new(#retries),
                    #conn,
                    #closure #body,
                )
            }
        }
        (ConnectionSource::Receiver(path), Some(retry)) => {
            let retries = &retry.retries;
            let owner = owner(path, inside_self_block, span);
            let field = field_accessor(path, &quote!(#krate::__private));
            let closure = quote_spanned!(retry.key.span()=> |#receiver|);
            quote_spanned! {span=>
                #krate::__private::run_explicit_field_retry(
                    #options,
                    #krate::RetryPolicy::new(#retries),
                    #owner,
                    #field,
                    #closure #body,
                )
            }
        }
    }
}

/// One `#[atomic]` block around the body of an `async fn`: the same runners as
/// [`atomic_call`]'s, from `__private::aio`, with async closures, awaited.
fn async_atomic_call(
    args: &AtomicArgs,
    source: &ConnectionSource,
    inside_self_block: bool,
    body: TokenStream,
    span: Span,
) -> TokenStream {
    let krate = runtime_path(args.krate.as_ref(), span);
    let options = block_options(args, &krate, span);
    let receiver = Ident::new(rename_self::RECEIVER, span);
    let aio = quote_spanned!(span=> #krate::__private::aio);
    match (source, &args.retry) {
        (ConnectionSource::Ambient, None) => quote_spanned! {span=>
            #aio::run_ambient(#options, async || #body).await
        },
        (ConnectionSource::Explicit(conn), None) => quote_spanned! {span=>
            #aio::run_explicit(#options, #conn, async |#conn| #body).await
        },
        (ConnectionSource::Receiver(path), None) => {
            let owner = owner(path, inside_self_block, span);
            let field = field_accessor(path, &aio);
            quote_spanned! {span=>
                #aio::run_explicit_field(#options, #owner, #field, async |#receiver| #body).await
            }
        }
        // As in `atomic_call`: the closure runs once per attempt, spanned on `retry`.
        (ConnectionSource::Ambient, Some(retry)) => {
            let retries = &retry.retries;
            let closure = quote_spanned!(retry.key.span()=> async ||);
            quote_spanned! {span=>
                #aio::run_ambient_retry(
                    #options,
                    #krate::RetryPolicy::new(#retries),
                    #closure #body,
                ).await
            }
        }
        (ConnectionSource::Explicit(conn), Some(retry)) => {
            let retries = &retry.retries;
            let closure = quote_spanned!(retry.key.span()=> async |#conn|);
            quote_spanned! {span=>
                #aio::run_explicit_retry(
                    #options,
                    #krate::RetryPolicy::new(#retries),
                    #conn,
                    #closure #body,
                ).await
            }
        }
        (ConnectionSource::Receiver(path), Some(retry)) => {
            let retries = &retry.retries;
            let owner = owner(path, inside_self_block, span);
            let field = field_accessor(path, &aio);
            let closure = quote_spanned!(retry.key.span()=> async |#receiver|);
            quote_spanned! {span=>
                #aio::run_explicit_field_retry(
                    #options,
                    #krate::RetryPolicy::new(#retries),
                    #owner,
                    #field,
                    #closure #body,
                ).await
            }
        }
    }
}

/// What a block on `self` is lent: `self`, or inside another such block, the receiver that
/// block passes on.
fn owner(path: &ReceiverPath, inside_self_block: bool, span: Span) -> TokenStream {
    if inside_self_block {
        Ident::new(rename_self::RECEIVER, span).into_token_stream()
    } else {
        path.self_token.into_token_stream()
    }
}

/// One `#[non_atomic_requests]` around `body`.
fn non_atomic_requests_call(
    args: &NonAtomicRequestsArgs,
    body: TokenStream,
    is_async: bool,
    span: Span,
) -> TokenStream {
    let krate = runtime_path(args.krate.as_ref(), span);
    let using = Alias::literal(args.using.as_ref());
    if is_async {
        quote_spanned! {span=>
            #krate::__private::aio::non_atomic_requests(#using, async { #body }).await
        }
    } else {
        quote_spanned! {span=>
            #krate::__private::non_atomic_requests(#using, || #body)
        }
    }
}

/// `|__atomic_self| __atomic_self.conn.__diesel_atomic_connection()` for `conn = self.conn`;
/// `module` is where the `FieldConnection` trait is (`__private`, or `__private::aio`).
/// Method-call autoderef makes it work for a field holding the connection and for one holding
/// a `&mut` to it. Spanned on the last field, so that a field that is not a connection is
/// reported there.
fn field_accessor(path: &ReceiverPath, module: &TokenStream) -> TokenStream {
    let span = match path.fields.last() {
        Some(field) => field.span(),
        None => path.self_token.span,
    };
    let receiver = Ident::new(rename_self::RECEIVER, path.self_token.span);
    let fields = &path.fields;
    quote_spanned! {span=>
        |#receiver| {
            use #module::FieldConnection as _;
            #receiver #(.#fields)* .__diesel_atomic_connection()
        }
    }
}

/// `check_error_type::<E>();` for a function declared `-> Result<T, E>`, so that an error
/// type without `From<diesel_atomic::Error>` is reported in our words rather than as a bound
/// of a `__private` function. Only the literal `Result<T, E>` names `E`; behind an alias
/// (`QueryResult<T>`, `AppResult<T>`) the entry point's own bound reports it.
///
/// Every token of the check is spanned on the return type, where the entry point's bound is
/// reported too: rustc keeps the first of two identical errors at one place, which is this one.
fn error_type_check(sig: &Signature, krate: &TokenStream, span: Span) -> TokenStream {
    let ReturnType::Type(_, ty) = &sig.output else {
        return TokenStream::new();
    };
    match literal_result_error(ty) {
        // `impl Trait` cannot be named in a turbofish, nor `!` on stable.
        Some(error) if can_annotate_let(error) => {
            let error = respanned(error.to_token_stream(), span);
            quote_spanned!(span=> #krate::__private::check_error_type::<#error>();)
        }
        _ => TokenStream::new(),
    }
}

/// `E` of a return type written `Result<T, E>` (any path ending in `Result`).
fn literal_result_error(ty: &Type) -> Option<&Type> {
    let Type::Path(path) = ty else {
        return None;
    };
    let last = path.path.segments.last()?;
    if path.qself.is_some() || last.ident != "Result" {
        return None;
    }
    let syn::PathArguments::AngleBracketed(arguments) = &last.arguments else {
        return None;
    };
    let types: Vec<&Type> = arguments
        .args
        .iter()
        .filter_map(|argument| match argument {
            syn::GenericArgument::Type(ty) => Some(ty),
            _ => None,
        })
        .collect();
    match types.as_slice() {
        [_, error] => Some(error),
        _ => None,
    }
}

/// The same tokens, every one of them spanned on `span`.
fn respanned(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut token| {
            if let TokenTree::Group(group) = &token {
                let mut inner =
                    proc_macro2::Group::new(group.delimiter(), respanned(group.stream(), span));
                inner.set_span(span);
                token = TokenTree::Group(inner);
            } else {
                token.set_span(span);
            }
            token
        })
        .collect()
}

/// What the block asks of its `BEGIN`: the runtime's constant for a plain `BEGIN` (nearly
/// every block), else the isolation level, read-only flag, SQLite lock mode and replica given.
fn begin_options(args: &AtomicArgs, krate: &TokenStream, span: Span) -> TokenStream {
    let read_only = args.read_only.as_ref().is_some_and(|flag| flag.value);
    let replica = args.replica.as_ref().is_some_and(|flag| flag.value);
    if args.isolation.is_none() && args.begin.is_none() && !read_only && !replica {
        return quote_spanned!(span=> #krate::__private::BeginOptions::DEFAULT);
    }
    let some_or_none = |variant: Option<TokenStream>| match variant {
        Some(variant) => quote_spanned!(span=> ::core::option::Option::Some(#variant)),
        None => quote_spanned!(span=> ::core::option::Option::None),
    };
    let isolation = some_or_none(args.isolation.as_ref().map(|isolation| {
        let variant = &isolation.variant;
        quote_spanned!(span=> #krate::Isolation::#variant)
    }));
    let mode = some_or_none(args.begin.as_ref().map(|mode| {
        let variant = &mode.variant;
        quote_spanned!(span=> #krate::BeginMode::#variant)
    }));
    quote_spanned! {span=>
        #krate::__private::BeginOptions {
            isolation: #isolation,
            read_only: #read_only,
            mode: #mode,
            replica: #replica,
        }
    }
}

/// The function's parts. syn puts the body's inner attributes (`#![allow(..)]`) among the
/// function's attributes; they become outer attributes, where they mean the same.
fn split(function: ItemFn) -> (Vec<syn::Attribute>, syn::Visibility, Signature, syn::Block) {
    let ItemFn {
        mut attrs,
        vis,
        sig,
        block,
    } = function;
    for attr in &mut attrs {
        attr.style = syn::AttrStyle::Outer;
    }
    (attrs, vis, sig, *block)
}

/// Where errors about the generated call belong: the declared return type (or the function's
/// name when there is none), never the attribute.
fn return_span(sig: &Signature) -> Span {
    match &sig.output {
        ReturnType::Type(_, ty) => ty.span(),
        ReturnType::Default => sig.ident.span(),
    }
}

/// `::diesel_atomic`, or the `crate = "path"` the user gave (its tokens keep the span of the
/// string, so an unresolved path is reported there).
fn runtime_path(krate: Option<&TokenStream>, span: Span) -> TokenStream {
    match krate {
        Some(path) => path.clone(),
        None => quote_spanned!(span=> ::diesel_atomic),
    }
}

/// The body, in its own braces, preceded by tracing-attributes' "fake return edge": a
/// never-taken `return` of a value of the declared return type. It makes the closure's return
/// type the function's, so the body is type-checked against the declared type exactly as
/// without the attribute, and a mismatch is reported at the user's code, not in ours.
fn body_with_fake_return(sig: &Signature, block: syn::Block) -> TokenStream {
    let fake_return = match &sig.output {
        ReturnType::Type(_, ty) if can_annotate_let(ty) => quote_spanned! {ty.span()=>
            #[allow(
                unknown_lints,
                unreachable_code,
                clippy::diverging_sub_expression,
                clippy::empty_loop,
                clippy::let_unit_value,
                clippy::let_with_type_underscore,
                clippy::needless_return,
                clippy::unreachable
            )]
            if false {
                let __atomic_fake_return: #ty = loop {};
                return __atomic_fake_return;
            }
        },
        _ => TokenStream::new(),
    };
    let mut body = TokenStream::new();
    block.brace_token.surround(&mut body, |body| {
        body.extend(fake_return);
        for stmt in &block.stmts {
            stmt.to_tokens(body);
        }
    });
    body
}

/// Whether `let x: ty` is allowed: not for `impl Trait` anywhere in it, nor for `!`.
fn can_annotate_let(ty: &Type) -> bool {
    fn mentions_impl(tokens: TokenStream) -> bool {
        tokens.into_iter().any(|token| match token {
            TokenTree::Ident(ident) => ident == "impl",
            TokenTree::Group(group) => mentions_impl(group.stream()),
            _ => false,
        })
    }
    !matches!(ty, Type::Never(_)) && !mentions_impl(ty.to_token_stream())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand_atomic(args: TokenStream, item: TokenStream) -> String {
        atomic(args, item).to_string()
    }

    #[test]
    fn ambient_function_runs_its_body_in_a_block() {
        let out = expand_atomic(
            quote!(),
            quote!(
                fn f() -> Result<(), E> {
                    Ok(())
                }
            ),
        );
        assert!(
            out.contains(":: diesel_atomic :: __private :: run_ambient"),
            "{out}"
        );
        assert!(out.contains("using : \"default\""), "{out}");
        assert!(out.contains("__atomic_fake_return"), "{out}");
    }

    #[test]
    fn conn_parameter_selects_explicit_mode() {
        let out = expand_atomic(
            quote!(using = "other"),
            quote!(
                fn f(conn: &mut C) -> QueryResult<()> {
                    Ok(())
                }
            ),
        );
        assert!(out.contains("run_explicit"), "{out}");
        assert!(out.contains("\"other\""), "{out}");
    }

    #[test]
    fn conn_self_field_runs_on_the_receiver_and_renames_self_in_the_body() {
        let out = expand_atomic(
            quote!(conn = self.store.conn),
            quote!(
                fn f(&mut self, id: u8) -> QueryResult<()> {
                    self.store.insert(id)?;
                    assert!(self.ok(), "{}", self::NAME);
                    Ok(())
                }
            ),
        );
        assert!(
            out.contains(
                "run_explicit_field (& :: diesel_atomic :: __private :: Options { using : \
                 \"default\" , savepoint : true , durable : false , begin : :: diesel_atomic :: \
                 __private :: BeginOptions :: DEFAULT , } , self , | __atomic_self | { use :: \
                 diesel_atomic :: __private :: FieldConnection as _ ; __atomic_self . store . \
                 conn . __diesel_atomic_connection () } , | __atomic_self | {"
            ),
            "{out}"
        );
        assert!(
            out.contains("__atomic_self . store . insert (id) ?"),
            "{out}"
        );
        assert!(
            out.contains("assert ! (__atomic_self . ok () , \"{}\" , self :: NAME)"),
            "{out}"
        );
        assert!(out.starts_with("fn f (& mut self , id : u8)"), "{out}");

        let out = expand_atomic(
            quote!(conn = self, durable = true, retry = 2),
            quote!(
                fn f(self: &mut Self) -> QueryResult<()> {
                    self.execute()
                }
            ),
        );
        assert!(
            out.contains(
                "RetryPolicy :: new (2) , self , | __atomic_self | { use :: diesel_atomic :: \
                 __private :: FieldConnection as _ ; __atomic_self . \
                 __diesel_atomic_connection () } , | __atomic_self |"
            ),
            "{out}"
        );
        assert!(out.contains("run_explicit_field_retry"), "{out}");
    }

    #[test]
    fn stacked_attributes_nest_in_reading_order() {
        let out = expand_atomic(
            quote!(using = "a"),
            quote!(
                #[doc = "kept"]
                #[atomic(using = "b")]
                #[inline]
                #[diesel_atomic::non_atomic_requests(using = "c")]
                fn f() -> Result<(), E> {
                    Ok(())
                }
            ),
        );
        let a = out.find("using : \"a\"").unwrap_or_else(|| panic!("{out}"));
        let b = out.find("using : \"b\"").unwrap_or_else(|| panic!("{out}"));
        let c = out
            .find("non_atomic_requests (\"c\" , ||")
            .unwrap_or_else(|| panic!("{out}"));
        assert!(a < b && b < c, "{out}");
        assert_eq!(out.matches("run_ambient").count(), 2, "{out}");
        assert_eq!(out.matches("check_error_type").count(), 1, "{out}");
        assert!(
            out.starts_with("# [doc = \"kept\"] # [inline] fn f ()"),
            "ours are taken over, the others kept: {out}"
        );
        // Their paths are still resolved, so their imports are used.
        assert!(
            out.contains(
                "{ # [allow (unused_imports)] use atomic as _ ; # [allow (unused_imports)] use \
                 diesel_atomic :: non_atomic_requests as _ ;"
            ),
            "{out}"
        );
        assert_eq!(out.matches("__atomic_fake_return").count(), 2, "{out}");
        let fake_return = out.find("__atomic_fake_return").unwrap();
        assert!(c < fake_return, "the body is innermost: {out}");
    }

    #[test]
    fn non_atomic_requests_takes_over_an_atomic_below_it() {
        let out = non_atomic_requests(
            quote!(),
            quote!(
                #[atomic(using = "other")]
                fn view(conn: &mut C) -> QueryResult<()> {
                    Ok(())
                }
            ),
        )
        .to_string();
        assert!(
            out.contains(
                ":: diesel_atomic :: __private :: non_atomic_requests (\"default\" , || :: \
                 diesel_atomic :: __private :: run_explicit (& :: diesel_atomic :: __private :: \
                 Options { using : \"other\""
            ),
            "{out}"
        );
        assert!(!out.contains("# [atomic"), "{out}");
    }

    #[test]
    fn a_block_on_self_inside_another_gets_the_receiver_passed_on() {
        let out = expand_atomic(
            quote!(conn = self.primary),
            quote!(
                #[atomic(conn = self.replica, using = "replica")]
                fn f(&mut self) -> QueryResult<()> {
                    self.primary.execute()
                }
            ),
        );
        assert!(out.contains("} , self , | __atomic_self | { use"), "{out}");
        assert!(
            out.contains("} , __atomic_self , | __atomic_self | { use"),
            "{out}"
        );
        assert!(
            out.contains("__atomic_self . primary . execute ()"),
            "{out}"
        );
    }

    #[test]
    fn a_stacked_attribute_with_errors_is_reported_and_left_out() {
        let out = expand_atomic(
            quote!(using = "a"),
            quote!(
                #[atomic(usin = "b")]
                fn f() -> Result<(), E> {
                    Ok(())
                }
            ),
        );
        assert_eq!(out.matches("compile_error").count(), 1, "{out}");
        assert!(out.contains("unknown argument `usin`"), "{out}");
        assert!(
            out.starts_with("fn f () -> Result < () , E > { # [allow (unused_imports)] use atomic as _ ; Ok (()) }"),
            "{out}"
        );
        assert!(!out.contains("run_ambient"), "{out}");
    }

    #[test]
    fn a_problem_of_the_function_is_reported_once_for_several_blocks() {
        let out = expand_atomic(
            quote!(using = "a"),
            quote!(
                #[atomic(using = "b")]
                fn f(db: &mut DbConn) -> Result<(), E> {
                    Ok(())
                }
            ),
        );
        assert_eq!(out.matches("compile_error").count(), 1, "{out}");
        assert!(out.contains("cannot tell whether `db`"), "{out}");
    }

    #[test]
    fn without_begin_options_the_block_begins_plainly() {
        for args in [
            quote!(),
            quote!(durable = true, retry = 2),
            quote!(read_only = false),
        ] {
            let out = expand_atomic(
                args.clone(),
                quote!(
                    fn f() -> Result<(), E> {
                        Ok(())
                    }
                ),
            );
            assert!(
                out.contains("begin : :: diesel_atomic :: __private :: BeginOptions :: DEFAULT"),
                "{args}: {out}"
            );
        }
    }

    #[test]
    fn begin_options_reach_the_runtime() {
        let out = expand_atomic(
            quote!(
                durable = true,
                isolation = "serializable",
                begin = "immediate"
            ),
            quote!(
                fn f(conn: &mut C) -> QueryResult<()> {
                    Ok(())
                }
            ),
        );
        assert!(
            out.contains(
                "begin : :: diesel_atomic :: __private :: BeginOptions { isolation : :: core :: \
                 option :: Option :: Some (:: diesel_atomic :: Isolation :: Serializable) , \
                 read_only : false , mode : :: core :: option :: Option :: Some (:: \
                 diesel_atomic :: BeginMode :: Immediate) , replica : false , }"
            ),
            "{out}"
        );
        let out = expand_atomic(
            quote!(read_only = true, crate = "renamed"),
            quote!(
                fn f() -> Result<(), E> {
                    Ok(())
                }
            ),
        );
        assert!(
            out.contains(
                "renamed :: __private :: BeginOptions { isolation : :: core :: option :: Option \
                 :: None , read_only : true , mode : :: core :: option :: Option :: None , \
                 replica : false , }"
            ),
            "{out}"
        );
        let out = expand_atomic(
            quote!(durable = true, read_only = true, replica = true),
            quote!(
                fn f() -> Result<(), E> {
                    Ok(())
                }
            ),
        );
        assert!(
            out.contains(
                "read_only : true , mode : :: core :: option :: Option :: None , replica : true , }"
            ),
            "{out}"
        );
    }

    #[test]
    fn replica_blocks_are_refused_where_they_cannot_run_on_a_replica() {
        let cases = [
            (
                quote!(replica = true),
                quote!(
                    fn f() -> Result<(), E> {
                        Ok(())
                    }
                ),
                "`replica = true` needs `read_only = true`",
            ),
            (
                quote!(read_only = true, replica = true, isolation = "serializable"),
                quote!(
                    fn f() -> Result<(), E> {
                        Ok(())
                    }
                ),
                "`replica = true` cannot be combined with `isolation = ",
            ),
            (
                quote!(read_only = true, replica = true),
                quote!(
                    fn f(conn: &mut PgConnection) -> QueryResult<()> {
                        Ok(())
                    }
                ),
                "so the block cannot run on `conn`, the connection passed in",
            ),
            (
                quote!(read_only = true, replica = true, conn = self.db),
                quote!(
                    fn f(&mut self) -> QueryResult<()> {
                        Ok(())
                    }
                ),
                "so the block cannot run on `self.db`, the connection passed in",
            ),
        ];
        for (args, item, expected) in cases {
            let out = expand_atomic(args.clone(), item);
            assert!(out.contains("compile_error"), "{args}: {out}");
            assert!(out.contains(expected), "{args}: {out}");
        }
        // `replica = false` asks for nothing.
        let out = expand_atomic(
            quote!(replica = false),
            quote!(
                fn f(conn: &mut PgConnection) -> QueryResult<()> {
                    Ok(())
                }
            ),
        );
        assert!(!out.contains("compile_error"), "{out}");
    }

    #[test]
    fn retry_reruns_the_body_through_the_retrying_entry_points() {
        let item = quote!(
            fn f() -> Result<(), E> {
                Ok(())
            }
        );
        let out = expand_atomic(quote!(durable = true, retry = 3), item);
        assert!(
            out.contains(
                ":: diesel_atomic :: __private :: run_ambient_retry (& :: diesel_atomic :: \
                 __private :: Options"
            ),
            "{out}"
        );
        assert!(
            out.contains(":: diesel_atomic :: RetryPolicy :: new (3) , ||"),
            "{out}"
        );
        let out = expand_atomic(
            quote!(retry = 1u32, durable = true),
            quote!(
                fn f(conn: &mut C) -> QueryResult<()> {
                    Ok(())
                }
            ),
        );
        assert!(out.contains("run_explicit_retry"), "{out}");
        assert!(
            out.contains("RetryPolicy :: new (1) , conn , | conn |"),
            "{out}"
        );
    }

    #[test]
    fn closures_borrow_the_parameters() {
        // A `move` closure would take the parameters into the block and drop them before
        // COMMIT; without the attribute they live until the function returns.
        for (args, item) in [
            (
                quote!(),
                quote!(
                    fn f(guard: G) -> Result<(), E> {
                        Ok(())
                    }
                ),
            ),
            (
                quote!(),
                quote!(
                    fn f(conn: &mut C, guard: G) -> QueryResult<()> {
                        Ok(())
                    }
                ),
            ),
            (
                quote!(durable = true, retry = 2),
                quote!(
                    fn f(guard: G) -> Result<(), E> {
                        Ok(())
                    }
                ),
            ),
            (
                quote!(durable = true, retry = 2),
                quote!(
                    fn f(conn: &mut C, guard: G) -> QueryResult<()> {
                        Ok(())
                    }
                ),
            ),
        ] {
            let out = expand_atomic(args.clone(), item);
            assert!(out.contains("__private :: run_"), "{args}: {out}");
            assert!(!out.contains("move"), "{args}: {out}");
        }
        let out = non_atomic_requests(
            quote!(),
            quote!(
                fn view(guard: G) -> u8 {
                    1
                }
            ),
        )
        .to_string();
        assert!(!out.contains("move"), "{out}");
    }

    #[test]
    fn a_literal_result_has_its_error_type_checked_first() {
        let out = expand_atomic(
            quote!(),
            quote!(
                fn f() -> std::result::Result<u8, MyError<T>> {
                    Ok(1)
                }
            ),
        );
        let check = out
            .find(":: diesel_atomic :: __private :: check_error_type :: < MyError < T > > () ;")
            .unwrap_or_else(|| panic!("{out}"));
        let call = out.find("run_ambient").unwrap();
        assert!(check < call, "{out}");
        // Behind an alias the type is not known here; nor can `impl Trait` be named.
        for item in [
            quote!(
                fn f() -> QueryResult<u8> {
                    Ok(1)
                }
            ),
            quote!(
                fn f() -> io::Result<u8> {
                    Ok(1)
                }
            ),
            quote!(
                fn f() -> Result<u8, impl Error> {
                    Ok(1)
                }
            ),
        ] {
            let out = expand_atomic(quote!(), item);
            assert!(!out.contains("check_error_type"), "{out}");
        }
    }

    #[test]
    fn retry_without_durable_keeps_the_function() {
        let out = expand_atomic(
            quote!(retry = 3),
            quote!(
                fn f() -> Result<(), E> {
                    Ok(())
                }
            ),
        );
        assert!(out.starts_with("fn f"), "{out}");
        assert_eq!(out.matches("compile_error").count(), 1, "{out}");
        assert!(!out.contains("run_ambient"), "{out}");
    }

    #[test]
    fn crate_path_replaces_the_runtime_path() {
        let out = expand_atomic(
            quote!(crate = "renamed"),
            quote!(
                fn f() -> Result<(), E> {
                    Ok(())
                }
            ),
        );
        assert!(out.contains("renamed :: __private :: run_ambient"), "{out}");
        assert!(!out.contains("diesel_atomic"), "{out}");
    }

    #[test]
    fn errors_keep_the_function() {
        let out = expand_atomic(
            quote!(usin = "x"),
            quote!(
                fn f() -> Result<(), E> {
                    Ok(())
                }
            ),
        );
        assert!(out.contains("compile_error"), "{out}");
        assert!(out.starts_with("fn f"), "{out}");
        assert!(!out.contains("run_ambient"), "{out}");
    }

    #[test]
    fn argument_and_signature_problems_are_reported_together() {
        let out = expand_atomic(
            quote!(usin = "x"),
            quote!(
                const fn f() -> i32 {
                    1
                }
            ),
        );
        assert_eq!(out.matches("compile_error").count(), 3, "{out}");
    }

    #[test]
    fn option_and_signature_problems_are_reported_together() {
        let out = expand_atomic(
            quote!(retry = 3),
            quote!(
                const fn f(db: &mut DbConn) -> i32 {
                    1
                }
            ),
        );
        assert_eq!(out.matches("compile_error").count(), 4, "{out}");
        assert!(out.contains("cannot be applied to a `const fn`"), "{out}");
        assert!(
            out.contains("needs a function that returns `Result"),
            "{out}"
        );
        assert!(
            out.contains("`retry` reruns the whole transaction"),
            "{out}"
        );
        assert!(out.contains("cannot tell whether `db`"), "{out}");
    }

    #[test]
    fn async_functions_run_on_the_async_runners() {
        let ambient = expand_atomic(
            quote!(),
            quote!(
                async fn f() -> Result<(), E> {
                    Ok(())
                }
            ),
        );
        assert!(
            ambient.contains(":: diesel_atomic :: __private :: aio :: run_ambient"),
            "{ambient}"
        );
        assert!(ambient.contains("async ||"), "{ambient}");
        assert!(ambient.contains(". await"), "{ambient}");
        let explicit = expand_atomic(
            quote!(durable = true, retry = 2),
            quote!(
                async fn f(conn: &mut AsyncPgConnection) -> Result<(), E> {
                    Ok(())
                }
            ),
        );
        assert!(explicit.contains("aio :: run_explicit_retry"), "{explicit}");
        assert!(explicit.contains("async | conn |"), "{explicit}");
    }

    #[test]
    fn a_sync_connection_in_an_async_fn_is_refused_on_its_type() {
        let out = expand_atomic(
            quote!(),
            quote!(
                async fn f(conn: &mut PgConnection) -> Result<(), E> {
                    Ok(())
                }
            ),
        );
        assert!(out.contains("needs a diesel-async connection"), "{out}");
        assert!(!out.contains("run_explicit"), "{out}");
    }

    #[test]
    fn impl_trait_return_types_get_no_fake_return() {
        let out = non_atomic_requests(
            quote!(),
            quote!(
                fn view() -> impl Sized {
                    1
                }
            ),
        )
        .to_string();
        assert!(out.contains("non_atomic_requests (\"default\""), "{out}");
        assert!(!out.contains("__atomic_fake_return"), "{out}");
    }

    #[test]
    fn non_atomic_requests_wraps_any_function() {
        let out = non_atomic_requests(
            quote!(using = "other"),
            quote!(
                fn view(&self) -> i32 {
                    1
                }
            ),
        )
        .to_string();
        assert!(
            out.contains(":: diesel_atomic :: __private :: non_atomic_requests (\"other\" , ||"),
            "{out}"
        );
    }

    #[test]
    fn non_atomic_requests_runs_an_async_view_exempt() {
        let out = non_atomic_requests(
            quote!(),
            quote!(
                async fn view() {}
            ),
        )
        .to_string();
        assert!(
            out.contains("__private :: aio :: non_atomic_requests (\"default\" , async {"),
            "{out}"
        );
        assert!(out.contains(". await"), "{out}");
    }

    #[test]
    fn test_attribute_makes_a_test_that_runs_its_body_in_the_runtime() {
        let out = test(
            quote!(),
            quote!(
                #[should_panic]
                fn signs_up() {
                    assert!(false);
                }
            ),
        )
        .to_string();
        assert!(
            out.starts_with(
                "# [:: core :: prelude :: v1 :: test] # [should_panic] fn signs_up () {"
            ),
            "{out}"
        );
        assert!(
            out.contains(
                ":: diesel_atomic :: __private :: run_test (:: diesel_atomic :: __private :: \
                 TestOptions { setup : :: core :: option :: Option :: None , transaction : true , } , ||"
            ),
            "{out}"
        );
    }

    #[test]
    fn test_attribute_passes_its_arguments_on() {
        let out = test(
            quote!(
                setup = fixtures::databases,
                transaction = false,
                crate = "da"
            ),
            quote!(
                fn commits() -> Result<(), E> {
                    Ok(())
                }
            ),
        )
        .to_string();
        assert!(
            out.contains(
                "da :: __private :: TestOptions { setup : :: core :: option :: Option :: Some \
                 (fixtures :: databases) , transaction : false , }"
            ),
            "{out}"
        );
        assert!(out.contains("fn commits () -> Result < () , E >"), "{out}");
        assert!(out.contains("__atomic_fake_return"), "{out}");
    }

    #[test]
    fn test_attribute_runs_an_async_fn_on_the_async_runtime() {
        let out = test(
            quote!(),
            quote!(
                async fn signs_up() -> Result<(), E> {
                    Ok(())
                }
            ),
        )
        .to_string();
        assert!(
            out.starts_with("# [:: core :: prelude :: v1 :: test] fn signs_up () ->"),
            "{out}"
        );
        assert!(
            out.contains(":: diesel_atomic :: __private :: aio :: run_test ("),
            "{out}"
        );
        assert!(out.contains(", async move {"), "{out}");
    }

    #[test]
    fn test_attribute_errors_keep_the_function_as_written() {
        for (args, item, message) in [
            (
                quote!(),
                quote!(
                    fn f(db: &mut C) {}
                ),
                "needs a function without parameters",
            ),
            (
                quote!(),
                quote!(
                    #[test]
                    fn f() {}
                ),
                "makes the function a test already",
            ),
            (
                quote!(),
                quote!(
                    #[tokio::test]
                    async fn f() {}
                ),
                "remove #[tokio::test]",
            ),
            (
                quote!(),
                quote!(
                    #[atomic]
                    fn f() -> Result<(), E> {
                        Ok(())
                    }
                ),
                "#[atomic] below #[diesel_atomic::test] would wrap the test transaction",
            ),
            (
                quote!(transaction = 1),
                quote!(
                    fn f() {}
                ),
                "takes a bool",
            ),
            (
                quote!(),
                quote!(
                    struct S;
                ),
                "applies to functions, not to structs",
            ),
        ] {
            let out = test(args, item.clone()).to_string();
            assert!(out.starts_with(&item.to_string()), "{out}");
            assert!(out.contains("compile_error"), "{out}");
            assert!(out.contains(message), "{message}: {out}");
            assert!(!out.contains("run_test"), "{out}");
        }
    }
}
