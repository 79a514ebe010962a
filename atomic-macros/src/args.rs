//! Parsing `#[atomic(...)]` arguments into `AtomicArgs`.

use proc_macro2::{Span, TokenStream};
use syn::meta::ParseNestedMeta;
use syn::parse::Parser;
use syn::{Ident, LitBool, LitStr, Path};

/// The parsed arguments, each with the span of the tokens that set it.
#[derive(Default)]
pub(crate) struct AtomicArgs {
    pub(crate) using: Option<LitStr>,
    pub(crate) savepoint: Option<LitBool>,
    pub(crate) durable: Option<LitBool>,
    pub(crate) conn: Option<Ident>,
    pub(crate) krate: Option<(Path, Span)>,
}

pub(crate) const VALID_KEYS: &[&str] = &["using", "savepoint", "durable", "conn", "crate"];

impl AtomicArgs {
    pub(crate) fn parse(args: TokenStream) -> syn::Result<Self> {
        let mut parsed = AtomicArgs::default();
        let mut errors: Option<syn::Error> = None;
        let parser = syn::meta::parser(|meta| {
            if let Err(error) = parsed.parse_one(&meta) {
                match &mut errors {
                    Some(all) => all.combine(error),
                    None => errors = Some(error),
                }
            }
            Ok(())
        });
        parser.parse2(args)?;
        match errors {
            Some(error) => Err(error),
            None => Ok(parsed),
        }
    }

    fn parse_one(&mut self, meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
        let key = meta
            .path
            .get_ident()
            .map(|ident| ident.to_string())
            .unwrap_or_default();
        let duplicate = || meta.error(format!("`{key}` is given more than once; keep one"));
        match key.as_str() {
            "using" => {
                let value: LitStr = meta.value()?.parse()?;
                if self.using.replace(value).is_some() {
                    return Err(duplicate());
                }
            }
            "savepoint" => {
                let value: LitBool = meta.value()?.parse()?;
                if self.savepoint.replace(value).is_some() {
                    return Err(duplicate());
                }
            }
            "durable" => {
                let value: LitBool = meta.value()?.parse()?;
                if self.durable.replace(value).is_some() {
                    return Err(duplicate());
                }
            }
            "conn" => {
                let value: Ident = meta.value()?.parse()?;
                if self.conn.replace(value).is_some() {
                    return Err(duplicate());
                }
            }
            "crate" => {
                let value: LitStr = meta.value()?.parse()?;
                let path: Path = value.parse()?;
                if self.krate.replace((path, value.span())).is_some() {
                    return Err(duplicate());
                }
            }
            _ => {
                // Consume the value so the arguments after it are still checked.
                if meta.input.peek(syn::Token![=]) {
                    let _: syn::Expr = meta.value()?.parse()?;
                }
                let valid = VALID_KEYS
                    .iter()
                    .map(|key| format!("`{key}`"))
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(meta.error(format!(
                    "unknown argument `{}`; expected one of: {valid}",
                    quote::ToTokens::to_token_stream(&meta.path)
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;

    #[test]
    fn parses_every_key() {
        let args = AtomicArgs::parse(quote!(
            using = "other",
            savepoint = false,
            durable = true,
            conn = c,
            crate = "x::y"
        ))
        .unwrap();
        assert_eq!(args.using.unwrap().value(), "other");
        assert!(!args.savepoint.unwrap().value);
        assert!(args.durable.unwrap().value);
        assert_eq!(args.conn.unwrap().to_string(), "c");
        assert!(args.krate.is_some());
    }

    #[test]
    fn rejects_unknown_and_duplicate_keys_together() {
        let error = AtomicArgs::parse(quote!(usin = "x", durable = true, durable = false))
            .err()
            .unwrap();
        let messages: Vec<String> = error.into_iter().map(|e| e.to_string()).collect();
        assert_eq!(messages.len(), 2, "{messages:?}");
        assert!(messages[0].contains("unknown argument `usin`"));
        assert!(messages[1].contains("`durable` is given more than once"));
    }
}
