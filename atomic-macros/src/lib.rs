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
/// # Arguments
///
/// Each at most once, in any order, separated by commas (a trailing comma is fine):
///
/// | argument | default | meaning |
/// | --- | --- | --- |
/// | `using = "alias"` | `"default"` | The database alias. An alias is letters, digits, `_` and `-`. |
/// | `savepoint = false` | `true` | A nested block joins its parent instead of opening a savepoint; its error marks the parent for rollback. |
/// | `durable = true` | `false` | The block must be the outermost one of its alias (`Error::DurableNested` otherwise). |
/// | `conn = name` | `conn` | The parameter that holds the connection (explicit mode). A parameter named `conn` is used without saying so. |
/// | `crate = "path"` | `"diesel_atomic"` | Where the `diesel_atomic` crate is, for a renamed dependency. |
///
/// `durable = true` together with `savepoint = false` is refused: a durable block is always the
/// outermost block and `savepoint` only applies to nested ones, so the pair could only ever
/// change anything directly inside a test transaction, where it would make the test behave
/// unlike production.
///
/// # The function
///
/// A free function or a method (`self`, `&self`, `&mut self`) with generics, lifetimes,
/// `where` clauses and `impl Trait` arguments; its signature, doc comments and other
/// attributes are kept as written. It must return a `Result<T, E>` (or an alias such as
/// `QueryResult<T>`) whose error type implements `From<diesel_atomic::Error>`. With a
/// `conn: &mut C` parameter the block runs on that connection (explicit mode); without one it
/// checks out the alias's connection from its pool (ambient mode) and the body reaches it with
/// `diesel_atomic::connection`.
///
/// # Compile errors
///
/// Each is reported on the tokens at fault, and problems that do not depend on each other
/// are reported together. On any error the function is kept unchanged, so nothing else in the
/// crate fails because of it.
///
/// Arguments (`#[non_atomic_requests]` reports the same ones for its own keys):
/// - ``unknown argument `usin`; did you mean `using`? #[atomic] takes `using`, `savepoint`,
///   `durable`, `conn` and `crate` `` (the suggestion only when a key is close);
/// - ``` `using` is given more than once; keep one ```;
/// - ``expected an argument such as `using = "other"`, found `= =`; #[atomic] takes ...``
///   and ``expected an argument before this `,` `` for anything that is not `key = value`;
/// - ``` `durable` needs a value: `durable = true` ```, ``` `using =` needs a value: `using = "other"` ```,
///   ``` `using(...)` is not supported; write `using = "other"` ```,
///   ``expected `=` after `using`, as in `using = "other"` ``;
/// - ``` `using` takes the database alias as a string: `using = "other"` ```;
/// - `the alias is empty; ...`, `the alias "a b" contains whitespace; ...`,
///   `the alias "replica.1" contains '.'; an alias is the name of a configured database, made
///   of letters, digits, `_` and `-`, such as "default" or "replica-1"`;
/// - ``` `savepoint` takes a bool: `savepoint = true` or `savepoint = false` ``` (for
///   `"false"`: ``, without quotes: `savepoint = false` ``);
/// - ``` `conn` takes the name of the connection parameter, without quotes: `conn = db` ```;
/// - ``` `crate` takes a path in a string: `crate = "diesel_atomic"` ``` and
///   ``` `crate = "a b"` is not a path to a crate or module; ... ```;
/// - `` `savepoint = false` has no effect with `durable = true`: ...; remove `savepoint = false` ``.
///
/// The item:
/// - ``#[atomic] applies to functions, not to structs`` (enums, `impl` blocks, traits,
///   constants, statics, modules, ...);
/// - ``#[atomic] needs a function with a body; on a trait method, put it on the method in each
///   `impl` instead``;
/// - ``#[atomic] does not support `async fn` yet: diesel connections are synchronous; ...``;
/// - ``#[atomic] cannot be applied to a `const fn`: it works at run time; remove `const` ``;
/// - ``#[atomic] needs a function that returns `Result<T, E>` (such as `QueryResult<T>`): the
///   block commits when it returns `Ok` and rolls back on `Err` `` on a return type that is
///   certainly not a `Result` (`()`, `i32`, `Option<T>`, `impl Trait`, references, tuples), or
///   on the name of a function that returns nothing;
/// - ``the connection parameter `conn` must be a `&mut` reference, such as `conn: &mut
///   SqliteConnection`: a transaction needs `&mut` access to its connection``;
/// - ``` `conn = databse` names no parameter of this function; did you mean `conn = database`? ```;
/// - ``` `connection` looks like a connection, but #[atomic] runs on a parameter named `conn`
///   ...; rename it to `conn` or write `#[atomic(conn = connection)]` ```;
/// - `#[atomic] is given twice for alias "default" (the inner block would only be a savepoint
///   of the outer one); keep one`;
/// - `#[atomic] and #[non_atomic_requests] contradict each other for alias "default": keep
///   one; to run part of a non-atomic view in a transaction, move that part into its own
///   #[atomic] function and call it`.
///
/// Left to the compiler, and reported at the function's return type: an error type without
/// `From<diesel_atomic::Error>` (E0277), and a type alias that is not a `Result` (E0308).
/// An unresolved `crate = "path"` is reported at the string (E0433).
///
/// See the `diesel_atomic::atomic` re-export for runnable examples.
#[proc_macro_attribute]
pub fn atomic(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::atomic(args.into(), item.into()).into()
}

/// Exempts the function (a view) from the per-request transaction on one alias.
///
/// # Arguments
///
/// | argument | default | meaning |
/// | --- | --- | --- |
/// | `using = "alias"` | `"default"` | The alias whose per-request transaction the view opts out of. |
/// | `crate = "path"` | `"diesel_atomic"` | Where the `diesel_atomic` crate is, for a renamed dependency. |
///
/// One attribute per alias: stack them to opt out of several. The function may return
/// anything; free functions and methods are accepted as for `#[atomic]`.
///
/// # Compile errors
///
/// The argument errors of `#[atomic]` for `using` and `crate`, and
/// ``` `savepoint` is an argument of #[atomic], not of #[non_atomic_requests], which takes only
/// `using` and `crate` ``` for the keys of `#[atomic]`. On the item: not a function, no body,
/// `async fn`, `const fn` (the messages of `#[atomic]`), and
/// `#[non_atomic_requests] is given twice for alias "other"; keep one`, or the contradiction
/// with an `#[atomic]` for the same alias on the same function.
///
/// See the `diesel_atomic::non_atomic_requests` re-export for runnable examples.
#[proc_macro_attribute]
pub fn non_atomic_requests(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::non_atomic_requests(args.into(), item.into()).into()
}
