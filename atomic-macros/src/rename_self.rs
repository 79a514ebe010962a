//! `conn = self.conn`: the body runs in a closure that receives the receiver as a parameter,
//! so its `self` is renamed to that parameter (as async-trait renames it to `__self`).
//!
//! `self` cannot be a closure parameter, and the closure cannot capture the method's `self`
//! either: the block holds it, to reach the connection, while the body runs.

use proc_macro2::{Ident, TokenStream, TokenTree};
use syn::visit_mut::{self, VisitMut};
use syn::{Block, ExprPath, Item, Macro};

/// What the body's `self` becomes: the body closure's parameter.
pub(crate) const RECEIVER: &str = "__atomic_self";

/// Renames every `self` value in `block` to `__atomic_self`, keeping the user's span on each.
/// Nested items (`fn`, `impl`, `mod`, ...) are left alone: their `self` is their own.
pub(crate) fn rename_self(block: &mut Block) {
    RenameSelf.visit_block_mut(block);
}

struct RenameSelf;

impl VisitMut for RenameSelf {
    fn visit_expr_path_mut(&mut self, expr: &mut ExprPath) {
        // `self`, not `self::module::item`.
        if expr.qself.is_none()
            && let Some(ident) = expr.path.get_ident()
            && ident == "self"
            && let Some(segment) = expr.path.segments.first_mut()
        {
            segment.ident = Ident::new(RECEIVER, segment.ident.span());
        }
        visit_mut::visit_expr_path_mut(self, expr);
    }

    fn visit_item_mut(&mut self, _item: &mut Item) {}

    /// Macro arguments are tokens, not expressions: every `self` not followed by `::`.
    fn visit_macro_mut(&mut self, mac: &mut Macro) {
        mac.tokens = rename_in_tokens(std::mem::take(&mut mac.tokens));
    }
}

fn rename_in_tokens(tokens: TokenStream) -> TokenStream {
    let trees: Vec<TokenTree> = tokens.into_iter().collect();
    let mut renamed = Vec::with_capacity(trees.len());
    for (index, tree) in trees.iter().enumerate() {
        renamed.push(match tree {
            TokenTree::Ident(ident) if ident == "self" && !starts_path(&trees[index + 1..]) => {
                TokenTree::Ident(Ident::new(RECEIVER, ident.span()))
            }
            TokenTree::Group(group) => {
                let mut inner =
                    proc_macro2::Group::new(group.delimiter(), rename_in_tokens(group.stream()));
                inner.set_span(group.span());
                TokenTree::Group(inner)
            }
            other => other.clone(),
        });
    }
    renamed.into_iter().collect()
}

/// Whether the tokens begin with `::`.
fn starts_path(rest: &[TokenTree]) -> bool {
    matches!(
        rest,
        [TokenTree::Punct(first), TokenTree::Punct(second), ..]
            if first.as_char() == ':'
                && first.spacing() == proc_macro2::Spacing::Joint
                && second.as_char() == ':'
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::{ToTokens, quote};

    fn renamed(block: TokenStream) -> String {
        let mut block: Block = syn::parse2(block).unwrap();
        rename_self(&mut block);
        block.to_token_stream().to_string()
    }

    #[test]
    fn self_values_are_renamed() {
        let out = renamed(quote!({
            self.conn.execute()?;
            let this = &mut *self;
            let closure = || self.count += 1;
            match self {
                _ => {}
            }
            Ok(self)
        }));
        assert!(
            !out.split_whitespace().any(|token| token == "self"),
            "{out}"
        );
        assert_eq!(out.matches("__atomic_self").count(), 5, "{out}");
    }

    #[test]
    fn paths_and_types_are_kept() {
        let out = renamed(quote!({
            self::helpers::run(Self::NAME);
            let value: Self = Self::new();
            crate::x::y(self.a)
        }));
        assert!(
            out.contains("self :: helpers :: run (Self :: NAME)"),
            "{out}"
        );
        assert!(out.contains("let value : Self = Self :: new ()"), "{out}");
        assert!(out.contains("crate :: x :: y (__atomic_self . a)"), "{out}");
    }

    #[test]
    fn macro_arguments_are_renamed_but_not_paths_in_them() {
        let out = renamed(quote!({
            assert!(self.ok(), "{}", self.name);
            println!("{:?}", [self.a, self::B]);
            Ok(())
        }));
        assert!(
            out.contains("assert ! (__atomic_self . ok () , \"{}\" , __atomic_self . name)"),
            "{out}"
        );
        assert!(
            out.contains("println ! (\"{:?}\" , [__atomic_self . a , self :: B])"),
            "{out}"
        );
    }

    #[test]
    fn nested_items_keep_their_own_self() {
        let out = renamed(quote!({
            struct Local;
            impl Local {
                fn get(&self) -> u8 {
                    self.helper()
                }
            }
            fn free(value: u8) -> u8 {
                value
            }
            Ok(self.value)
        }));
        assert!(
            out.contains("fn get (& self) -> u8 { self . helper () }"),
            "{out}"
        );
        assert!(out.contains("Ok (__atomic_self . value)"), "{out}");
    }
}
