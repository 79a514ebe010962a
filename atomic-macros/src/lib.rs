#![warn(missing_docs)]
//! The attribute macros of `diesel-atomic`. Use them through the `diesel-atomic` facade.
//!
//! The entry points only convert token streams and delegate; parsing (`args`), checking
//! (`valid`) and code generation (`expand`) work on `proc_macro2` and are unit-tested.

mod args;
mod errors;
mod expand;
#[cfg(test)]
mod proptests;
mod suggest;
mod valid;

use proc_macro::TokenStream;

/// Runs the function as an atomic block: all of its database work commits, or none of it.
///
/// Options (each at most once, any order): `using = "alias"` (default `"default"`),
/// `savepoint = false` (a nested block joins its parent; its error marks the parent for
/// rollback), `durable = true` (must be the outermost block), `conn = name` (the parameter that
/// holds the connection, for explicit mode; a parameter named `conn` is picked up by itself),
/// `crate = "path"` (where `diesel_atomic` is, if renamed).
///
/// With a `conn: &mut C` parameter the block runs on that connection; without one it checks
/// out the alias's connection from its pool and the body reaches it with
/// `diesel_atomic::connection`. The function must return a `Result` whose error type
/// implements `From<diesel_atomic::Error>` (`QueryResult<T>` does).
///
/// See the `diesel_atomic::atomic` re-export for runnable examples.
#[proc_macro_attribute]
pub fn atomic(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::atomic(args.into(), item.into()).into()
}

/// Exempts the function from the per-request transaction on one alias.
///
/// See the `diesel_atomic::non_atomic_requests` re-export for documentation.
#[proc_macro_attribute]
pub fn non_atomic_requests(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::non_atomic_requests(args.into(), item.into()).into()
}
