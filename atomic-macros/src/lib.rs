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
mod rename_self;
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
/// | `isolation = "serializable"` | the connection's | The isolation level the transaction begins with: `"serializable"`, `"repeatable_read"`, `"read_committed"` or `"read_uncommitted"`. |
/// | `read_only = true` | `false` | The transaction begins `READ ONLY` (PostgreSQL, MySQL/MariaDB). |
/// | `replica = true` | `false` | The transaction begins on one of the alias's replicas (ambient mode, outermost); needs `read_only = true`. |
/// | `begin = "immediate"` | `"deferred"` | SQLite's lock mode at `BEGIN`: `"deferred"`, `"immediate"` or `"exclusive"`. |
/// | `retry = 5` | no retries | Rerun the whole block up to this many times after a transient failure; needs `durable = true`. |
/// | `conn = name` | `conn` | The parameter that holds the connection (explicit mode). A parameter named `conn` is used without saying so. `conn = self.conn` (any field path of `self`) runs the block on a connection the receiver of a `&mut self` method holds, `conn = self` on the receiver itself. |
/// | `ambient = true` | `false` | The block checks out the alias's connection from its pool (ambient mode) although a `&mut` parameter or `&mut self` might be a connection; without it, that is an error. |
/// | `crate = "path"` | `"diesel_atomic"` | Where the `diesel_atomic` crate is, for a renamed dependency. |
///
/// `durable = true` together with `savepoint = false` is refused: a durable block is always the
/// outermost block and `savepoint` only applies to nested ones, so the pair could only ever
/// change anything directly inside a test transaction, where it would make the test behave
/// unlike production.
///
/// ## How the transaction begins: `isolation`, `read_only`, `begin`
///
/// `#[atomic(durable = true, isolation = "serializable")]`,
/// `#[atomic(durable = true, read_only = true)]`, `#[atomic(durable = true, begin = "immediate")]`
/// ask for something of the `BEGIN` that opens the transaction (PostgreSQL: `BEGIN ISOLATION
/// LEVEL ... READ ONLY`; MySQL/MariaDB: `SET TRANSACTION ...` and `START TRANSACTION READ
/// ONLY`; SQLite: `BEGIN IMMEDIATE` / `BEGIN EXCLUSIVE`). They apply at the `BEGIN` of the
/// outermost block; on a block that turns out to be nested they are a run-time
/// `Error::TransactionManagement`, so pair them with `durable = true` (nested, the block is
/// then `Error::DurableNested`, whatever else it asks for). Inside a test transaction they are
/// ignored, as `durable` is. A backend that cannot honour a request refuses it at run time
/// instead of downgrading it: SQLite runs every transaction serializable and has no read-only
/// transactions, so it accepts only `isolation = "serializable"`, and `begin` is SQLite's
/// alone.
///
/// ## Reading from a replica: `replica`
///
/// `#[atomic(durable = true, read_only = true, replica = true)]` checks the block's connection
/// out of one of the alias's replicas (`Database::replica`) and runs the whole block on it,
/// read-only: nested blocks, `connection()` and `read` inside it use that connection. Before
/// it begins, the alias's read-your-writes policy applies as for a read (after this thread,
/// or for an `async fn` this task, committed on the alias, it may wait for the replica to
/// replay the commit, or use the primary). On an alias without replicas it runs on the primary. It must be the outermost
/// block of its alias: nested in another one it is a run-time `Error::ReplicaNested`. It
/// needs `read_only = true`, cannot be `isolation = "serializable"` (a PostgreSQL hot standby
/// cannot run it), and cannot run on a connection passed in (explicit mode): each is a compile
/// error on `replica`.
///
/// ## Rerunning after a transient failure: `retry`
///
/// `#[atomic(durable = true, retry = 5)]` reruns the whole block, up to 5 more times with a
/// short randomised backoff, when an attempt fails with a serialization failure (SQLSTATE
/// 40001), a deadlock (PostgreSQL 40P01, MySQL/MariaDB 1213) or `SQLITE_BUSY`, whether the
/// body returned it or the `COMMIT` did. Each attempt is rolled back before the next. A
/// `COMMIT` whose outcome is unknown (the connection broke during it) is never retried: it may
/// have committed. Panics and every other error are returned at once.
///
/// The body runs once per attempt, so it is an `FnMut` closure: it may not move an argument
/// out (clone it instead), and side effects outside the database (an e-mail, a message on a
/// queue) belong in `on_commit`, which runs once, after the attempt that committed. The error
/// type must also implement `diesel_atomic::AsDieselError`, through which the block finds the
/// diesel error to classify (`diesel::result::Error` and `diesel_atomic::Error` do).
///
/// `retry` requires `durable = true`: after such a failure the database has lost the whole
/// transaction, so only the outermost block can start it again.
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
/// The block never runs on another connection than the one the body writes to. So in ambient
/// mode a parameter that may be a connection is an error that names the fix: one whose type
/// is named `*Connection` (or is bounded by a `*Connection` trait), and any `&mut` parameter
/// of a type the macro cannot see into, such as a type alias (`db: &mut DbConn`) or a pattern
/// holding one. Types that are certainly not connections are fine: primitives, `str`,
/// `String`, slices, arrays and tuples of those, the standard collections, `Option`, `Cell`,
/// `RefCell`, `fmt::Formatter`, and generic or `impl Trait` types not bounded by a
/// `*Connection` trait. Write `conn = name` to run the block on the parameter, or
/// `ambient = true` when the block is meant to check out the alias's connection.
///
/// Methods: `self` and `&self` are ordinary receivers. A `&mut self` method must say where its
/// connection is, since `self` may hold it: `#[atomic(conn = self.conn)]` runs the block on the
/// connection in that field (the repository pattern; the field may own the connection or hold
/// a `&mut` to it, at any depth such as `self.store.conn`), `#[atomic(conn = self)]` on the
/// receiver itself (a method of an extension trait implemented for a connection), and
/// `#[atomic(ambient = true)]` checks out the alias's connection, as for a free function; a
/// `conn` parameter also settles it. With `conn = self...` the body still uses `self` as it
/// would without the attribute: the macro hands the block `self` and renames the body's `self`
/// to the closure parameter that stands for it (nested items keep their own `self`). One
/// `self` it cannot see is one captured inside a format string, `format!("{self}")`, which
/// rustc then reports as a second borrow of `self` (E0502); write `format!("{}", self)`. Only
/// a `&mut self` (or `self: &mut Self`) method can lend its connection this way.
///
/// Stacked attributes nest in reading order, as Python's decorators do: on
/// `#[atomic(using = "a")] #[atomic(using = "b")] fn f()`, the block on `"a"` is the outer one
/// and the block on `"b"` commits first, inside it; the same holds with
/// `#[non_atomic_requests]` among them. (The first attribute expands them all, so that rustc's
/// order of expansion, which would put the last-written outermost, does not decide.) Two of
/// them for one alias are an error.
///
/// The body only borrows the parameters it does not consume, so they are dropped when the
/// function returns, after the `COMMIT` or `ROLLBACK`, as without the attribute: a
/// `MutexGuard` argument still holds its lock while the transaction commits.
///
/// # Compile errors
///
/// Each is reported on the tokens at fault, and problems that do not depend on each other
/// are reported together. On any error the function is kept unchanged, so nothing else in the
/// crate fails because of it.
///
/// Arguments (`#[non_atomic_requests]` reports the same ones for its own keys):
/// - ``unknown argument `usin`; did you mean `using`? #[atomic] takes `using`, `savepoint`,
///   `durable`, `isolation`, `read_only`, `replica`, `begin`, `retry`, `conn`, `ambient` and
///   `crate` ``
///   (the suggestion only when a key is close);
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
/// - ``` `conn` takes the name of the connection parameter, without quotes: `conn = db` ```,
///   and ``` `conn` takes the name of the connection parameter, such as `conn = db`, or a field
///   of `self` that holds the connection, such as `conn = self.conn` ``` for anything else
///   (`conn = self.conn()`, `conn = 1`);
/// - ``` `ambient = true` contradicts `conn = db`: the block runs either on that connection or
///   on the alias's pooled one; keep one ```;
/// - ``unknown isolation level "serialisable"; did you mean "serializable"? `isolation` takes
///   "serializable", "repeatable_read", "read_committed" or "read_uncommitted"``, and
///   ``unknown SQLite lock mode "immedate"; did you mean "immediate"? `begin` takes
///   "deferred", "immediate" or "exclusive"``;
/// - ``` `isolation` takes the isolation level as a string: `isolation = "repeatable_read"` ```
///   and ``` `begin` takes SQLite's lock mode as a string: `begin = "immediate"` ``` (with the
///   name nearest to what was written);
/// - ``` `retry = 0` never reruns the block; remove `retry`, or give the number of reruns such
///   as `retry = 5` ```, ``` `retry` takes the number of reruns as an integer: `retry = 5` ```
///   (``, without quotes: `retry = 3` `` for `"3"`; ``, which cannot be negative`` for `-3`;
///   ``without a suffix`` for `3u8`), and ``` `retry = 4294967296` is more reruns than a `u32`
///   holds; ... ```;
/// - ``` `crate` takes a path in a string: `crate = "diesel_atomic"` ``` and
///   ``` `crate = "a b"` is not a path to a crate or module; ... ```;
/// - `` `savepoint = false` has no effect with `durable = true`: ...; remove `savepoint = false` ``;
/// - `` `retry` reruns the whole transaction, so the block must be the outermost one: add
///   `durable = true` (rerunning an inner block would run it again inside a transaction that is
///   already lost) ``;
/// - `` `replica = true` needs `read_only = true`: a replica refuses writes, so the block must
///   only read; add `read_only = true` `` and `` `replica = true` cannot be combined with
///   `isolation = "serializable"`: ... ``, on `replica`.
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
/// - ``` #[atomic] cannot tell whether `db` is a connection: write `#[atomic(conn = db)]` to
///   run the block on it, or `#[atomic(ambient = true)]` to run it on the alias's pooled
///   connection on purpose ```, on the parameter; for a pattern, ``#[atomic] cannot tell
///   whether this parameter holds a connection: give the connection a parameter of its own and
///   write `#[atomic(conn = name)]` ...``;
/// - ``` #[atomic] cannot tell whether `self` holds a connection: write `#[atomic(conn =
///   self.conn)]` (with the field that holds it, or `conn = self` if `self` is the connection)
///   to run the block on it, or `#[atomic(ambient = true)]` ... ```, on a `&mut self` receiver
///   in ambient mode;
/// - ``` `conn = self.conn` needs a method that takes `&mut self`: a transaction needs `&mut`
///   access to its connection ```;
/// - ``` an #[atomic] function cannot return a borrow of its connection `conn`: the block
///   needs the connection after the body returns, to COMMIT; return owned values instead ```,
///   on the connection's lifetime in the return type (`&'a mut C` and `-> QueryResult<Rows<'a>>`,
///   unless another parameter has `'a` too), or on an elided lifetime there when the
///   connection's is the only one it can be; and ``an #[atomic] method cannot return a borrow
///   of `self`, which holds its connection: ...`` with `conn = self.conn`;
/// - ``` `ambient = true` contradicts the parameter `conn`, which the block runs on: remove
///   `ambient = true`, or rename the parameter if the block should run on the alias's pooled
///   connection ```;
/// - `` `replica = true` checks the block's connection out of one of the alias's replicas, so
///   the block cannot run on `conn`, the connection passed in (it is not a replica); ... ``,
///   on `replica`;
/// - `#[atomic] is given twice for alias "default" (the inner block would only be a savepoint
///   of the outer one); keep one`;
/// - `#[atomic] and #[non_atomic_requests] contradict each other for alias "default": keep
///   one; to run part of a non-atomic view in a transaction, move that part into its own
///   #[atomic] function and call it`.
///
/// Left to the compiler, and reported at the function's return type: an error type without
/// `From<diesel_atomic::Error>` (E0277: ``the error type of an #[atomic] function must
/// implement `From<diesel_atomic::Error>`, and `SignupError` does not``, with what to add;
/// behind a type alias such as `AppResult<T>`, rustc's plain message), with `retry` one
/// without `AsDieselError` (E0277), and a type alias that is not a `Result` (E0308). With
/// `retry`, a body that moves an argument out is rustc's "cannot move out of `x`, a captured
/// variable in an `FnMut` closure" (E0507) at the move, with the closure shown at `retry`. An
/// unresolved `crate = "path"` is reported at the string (E0433), and a `conn = self.field`
/// whose field is not a connection at the field (E0599, "`Connection` ... not satisfied").
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
/// anything; free functions and methods are accepted as for `#[atomic]`. Stacked with
/// `#[atomic]`, the attributes nest in reading order, the first-written outermost.
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

/// Makes the function a test that runs inside a transaction rolled back at its end: Django's
/// `TestCase`.
///
/// # Arguments
///
/// Each at most once, in any order:
///
/// | argument | default | meaning |
/// | --- | --- | --- |
/// | `setup = path` | the registry in force | A `fn() -> Databases` whose registry the test enters (for its thread, and the threads of its runtime). Without it, the registry entered on the thread, else the installed one. |
/// | `transaction = false` | `true` | No test transaction: the test's blocks commit for real (Django's `TransactionTestCase`). |
/// | `crate = "path"` | `"diesel_atomic"` | Where the `diesel_atomic` crate is, for a renamed dependency. |
///
/// # The function
///
/// A test function: no parameters, returning `()` or a `Result<(), E>` as `#[test]` allows,
/// with `#[should_panic]`, `#[ignore]` and other attributes kept. It becomes a `#[test]` (do
/// not add one). Its body runs inside a test transaction on every alias of the registry,
/// rolled back when the body returns or panics: blocks inside are savepoints, `durable`
/// blocks are allowed directly inside, `on_commit` callbacks never run (see
/// `capture_on_commit_callbacks`), and `request()` inside shares the transaction. A
/// transaction that cannot begin (no registry, a server down) fails the test.
///
/// An `async fn` test (feature `async`) runs on a multi-thread tokio runtime of its own, as
/// `#[tokio::test(flavor = "multi_thread")]` does; the async aliases get the async test
/// transaction, rolled back with `.rollback().await`, and sync aliases the sync one. A plain
/// `fn` test begins on the sync aliases only.
///
/// # Compile errors
///
/// The argument errors of `#[atomic]` for its own keys (unknown with a suggestion, given twice,
/// no value, `transaction` not a bool, `crate` not a path in a string), and
/// ``` `setup` takes the path of a function that returns the test's `Databases`, such as
/// `setup = test_databases` ``` (``, without quotes: `setup = databases` `` for a string). On
/// the item: not a function, `const fn`, parameters (``#[diesel_atomic::test] needs a function
/// without parameters: ...``), a second test attribute below it (``... makes the function a
/// test already ...; remove #[test]``), and `#[atomic]` or `#[non_atomic_requests]` below it,
/// which would wrap the test transaction instead of running inside it. A `setup` function of
/// the wrong type is rustc's error at the path; an `async fn` without the `async` feature is
/// reported at `async`.
///
/// See the `diesel_atomic::test` re-export for runnable examples.
#[proc_macro_attribute]
pub fn test(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::test(args.into(), item.into()).into()
}
