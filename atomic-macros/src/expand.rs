//! Code generation: the function keeps its signature; its body runs inside a block.

use proc_macro2::TokenStream;
use quote::{ToTokens, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{ItemFn, ReturnType};

use crate::args::AtomicArgs;
use crate::valid::{self, ConnectionSource};

/// `#[atomic(args)] item`: on any error, the item unchanged plus the error, so the user sees
/// one precise message and no cascade.
pub(crate) fn atomic(args: TokenStream, item: TokenStream) -> TokenStream {
    match try_atomic(args, item.clone()) {
        Ok(expanded) => expanded,
        Err(error) => {
            let mut fallback = item;
            fallback.extend(error.into_compile_error());
            fallback
        }
    }
}

fn try_atomic(args: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let args = AtomicArgs::parse(args);
    let function = syn::parse2::<ItemFn>(item).map_err(|error| {
        syn::Error::new(
            error.span(),
            format!("#[atomic] applies to functions with a body: {error}"),
        )
    });
    let (args, function) = match (args, function) {
        (Ok(args), Ok(function)) => (args, function),
        (Err(mut first), Err(second)) => {
            first.combine(second);
            return Err(first);
        }
        (Err(error), _) | (_, Err(error)) => return Err(error),
    };
    let source = valid::check(&function, args.conn.as_ref())?;
    Ok(generate(&args, function, source))
}

fn generate(args: &AtomicArgs, mut function: ItemFn, source: ConnectionSource) -> TokenStream {
    let krate = match &args.krate {
        Some((path, _)) => path.to_token_stream(),
        None => quote!(::diesel_atomic),
    };
    let using = args
        .using
        .as_ref()
        .map_or_else(|| quote!("default"), ToTokens::to_token_stream);
    let savepoint = args.savepoint.as_ref().is_none_or(|lit| lit.value);
    let durable = args.durable.as_ref().is_some_and(|lit| lit.value);

    // syn puts the body's inner attributes (`#![allow(..)]`) in `attrs`; they become outer
    // attributes of the function, where they mean the same.
    for attr in &mut function.attrs {
        attr.style = syn::AttrStyle::Outer;
    }
    let ItemFn {
        attrs,
        vis,
        sig,
        block,
    } = function;
    let stmts = &block.stmts;
    let return_span = match &sig.output {
        ReturnType::Type(_, ty) => ty.span(),
        ReturnType::Default => sig.ident.span(),
    };
    let options = quote! {
        &#krate::__private::Options { using: #using, savepoint: #savepoint, durable: #durable }
    };
    let call = match source {
        ConnectionSource::Ambient => quote_spanned! {return_span=>
            #krate::__private::run_ambient(#options, move || { #(#stmts)* })
        },
        ConnectionSource::Explicit(conn) => quote_spanned! {return_span=>
            #krate::__private::run_explicit(#options, #conn, move |#conn| { #(#stmts)* })
        },
    };
    quote! {
        #(#attrs)*
        #vis #sig {
            #call
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand(args: TokenStream, item: TokenStream) -> String {
        atomic(args, item).to_string()
    }

    #[test]
    fn ambient_function_runs_its_body_in_a_block() {
        let out = expand(
            quote!(),
            quote!(
                fn f() -> Result<(), E> {
                    Ok(())
                }
            ),
        );
        assert!(out.contains("run_ambient"), "{out}");
        assert!(out.contains("using : \"default\""), "{out}");
    }

    #[test]
    fn conn_parameter_selects_explicit_mode() {
        let out = expand(
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
    fn errors_keep_the_function() {
        let out = expand(
            quote!(usin = "x"),
            quote!(
                fn f() -> Result<(), E> {
                    Ok(())
                }
            ),
        );
        assert!(out.contains("compile_error"), "{out}");
        assert!(out.contains("fn f"), "{out}");
    }

    #[test]
    fn async_fn_is_refused() {
        let out = expand(
            quote!(),
            quote!(
                async fn f() -> Result<(), E> {
                    Ok(())
                }
            ),
        );
        assert!(out.contains("does not support `async fn`"), "{out}");
    }
}
