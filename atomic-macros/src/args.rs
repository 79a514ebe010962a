//! Parsing the arguments of `#[atomic(...)]`, `#[non_atomic_requests(...)]` and
//! `#[diesel_atomic::test(...)]`.
//!
//! The arguments are split at top-level commas and each one is checked on its own, so a
//! typo in one does not hide a problem in the next: every problem is reported, each spanned
//! on its own tokens.

use proc_macro2::{Delimiter, Ident, Span, TokenStream, TokenTree};
use quote::ToTokens;
use syn::{Lit, LitStr, Path};

use crate::errors::Errors;
use crate::suggest;

/// Which attribute the arguments belong to; it decides the valid keys.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Attribute {
    Atomic,
    NonAtomicRequests,
    Test,
}

/// An argument of any of the attributes. The parsers `match` on it exhaustively, so a new key
/// cannot be parsed as another one.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Key {
    Using,
    Savepoint,
    Durable,
    Isolation,
    ReadOnly,
    Replica,
    Begin,
    Retry,
    Conn,
    Ambient,
    Setup,
    Transaction,
    Crate,
}

/// One argument: what users write, and a correct use of it for messages.
pub(crate) struct KeyRow {
    pub(crate) key: Key,
    pub(crate) name: &'static str,
    pub(crate) example: &'static str,
    /// The attributes that take it.
    pub(crate) attributes: &'static [Attribute],
}

/// Every argument, in the order messages list them: the one place a key is named. Messages,
/// suggestions and the property tests read it, and a unit test checks the docs tables in
/// `lib.rs` against it.
pub(crate) const KEYS: &[KeyRow] = &[
    KeyRow {
        key: Key::Using,
        name: "using",
        example: "using = \"other\"",
        attributes: ATOMIC_AND_NON_ATOMIC_REQUESTS,
    },
    KeyRow {
        key: Key::Savepoint,
        name: "savepoint",
        example: "savepoint = false",
        attributes: ATOMIC,
    },
    KeyRow {
        key: Key::Durable,
        name: "durable",
        example: "durable = true",
        attributes: ATOMIC,
    },
    KeyRow {
        key: Key::Isolation,
        name: "isolation",
        example: "isolation = \"serializable\"",
        attributes: ATOMIC,
    },
    KeyRow {
        key: Key::ReadOnly,
        name: "read_only",
        example: "read_only = true",
        attributes: ATOMIC,
    },
    KeyRow {
        key: Key::Replica,
        name: "replica",
        example: "replica = true",
        attributes: ATOMIC,
    },
    KeyRow {
        key: Key::Begin,
        name: "begin",
        example: "begin = \"immediate\"",
        attributes: ATOMIC,
    },
    KeyRow {
        key: Key::Retry,
        name: "retry",
        example: "retry = 5",
        attributes: ATOMIC,
    },
    KeyRow {
        key: Key::Conn,
        name: "conn",
        example: "conn = db",
        attributes: ATOMIC,
    },
    KeyRow {
        key: Key::Ambient,
        name: "ambient",
        example: "ambient = true",
        attributes: ATOMIC,
    },
    KeyRow {
        key: Key::Setup,
        name: "setup",
        example: "setup = test_databases",
        attributes: TEST,
    },
    KeyRow {
        key: Key::Transaction,
        name: "transaction",
        example: "transaction = false",
        attributes: TEST,
    },
    KeyRow {
        key: Key::Crate,
        name: "crate",
        example: "crate = \"diesel_atomic\"",
        attributes: ALL,
    },
];

const ATOMIC: &[Attribute] = &[Attribute::Atomic];
const ATOMIC_AND_NON_ATOMIC_REQUESTS: &[Attribute] =
    &[Attribute::Atomic, Attribute::NonAtomicRequests];
const TEST: &[Attribute] = &[Attribute::Test];
const ALL: &[Attribute] = &[
    Attribute::Atomic,
    Attribute::NonAtomicRequests,
    Attribute::Test,
];

impl Attribute {
    /// How messages name the attribute.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Attribute::Atomic => "#[atomic]",
            Attribute::NonAtomicRequests => "#[non_atomic_requests]",
            Attribute::Test => "#[diesel_atomic::test]",
        }
    }

    /// The arguments it takes, in the order messages list them.
    pub(crate) fn keys(self) -> impl Iterator<Item = &'static KeyRow> {
        KEYS.iter()
            .filter(move |row| row.attributes.contains(&self))
    }

    /// The names of the arguments it takes.
    pub(crate) fn key_names(self) -> Vec<&'static str> {
        self.keys().map(|row| row.name).collect()
    }

    /// The attribute recognised by the last segment of an attribute path
    /// (`#[atomic]`, `#[diesel_atomic::atomic]`). `#[diesel_atomic::test]` is not among them:
    /// it does not stack with the others, and `test` is rustc's own attribute too.
    pub(crate) fn from_path(path: &Path) -> Option<Attribute> {
        let last = path.segments.last()?;
        if last.ident == "atomic" {
            Some(Attribute::Atomic)
        } else if last.ident == "non_atomic_requests" {
            Some(Attribute::NonAtomicRequests)
        } else {
            None
        }
    }
}

/// A database alias, checked to be a plausible name.
#[derive(Clone)]
pub(crate) struct Alias {
    pub(crate) name: String,
    pub(crate) span: Span,
}

impl Alias {
    pub(crate) const DEFAULT: &'static str = "default";

    /// The literal the expansion passes to the runtime (a fresh one: the user's could carry
    /// a suffix).
    pub(crate) fn literal(alias: Option<&Alias>) -> LitStr {
        match alias {
            Some(alias) => LitStr::new(&alias.name, alias.span),
            None => LitStr::new(Alias::DEFAULT, Span::call_site()),
        }
    }

    pub(crate) fn name_or_default(alias: Option<&Alias>) -> &str {
        alias.map_or(Alias::DEFAULT, |alias| &alias.name)
    }
}

/// `savepoint = ...`, `durable = ...`, `read_only = ...`, `replica = ...` or `ambient = ...`,
/// with the tokens that set it for later messages.
pub(crate) struct Flag {
    pub(crate) value: bool,
    /// The key as written, for messages about what it asks for.
    pub(crate) key: Ident,
    /// The whole `key = value`, for messages about the argument as a whole.
    pub(crate) tokens: TokenStream,
}

/// One of a fixed set of names given as a string (`isolation = "serializable"`), as the name
/// of the runtime's enum variant, spanned on the user's string.
pub(crate) struct Choice {
    pub(crate) variant: Ident,
}

/// `isolation = "..."`: the names users write, and the `Isolation` variant each stands for.
const ISOLATION_LEVELS: &[(&str, &str)] = &[
    ("serializable", "Serializable"),
    ("repeatable_read", "RepeatableRead"),
    ("read_committed", "ReadCommitted"),
    ("read_uncommitted", "ReadUncommitted"),
];

/// `begin = "..."`: SQLite's lock modes, and the `BeginMode` variant each stands for.
const BEGIN_MODES: &[(&str, &str)] = &[
    ("deferred", "Deferred"),
    ("immediate", "Immediate"),
    ("exclusive", "Exclusive"),
];

/// `retry = n`: how many times, at most, the block is rerun after a transient failure (1 or
/// more).
pub(crate) struct Retry {
    /// The number, as a fresh unsuffixed literal spanned on the user's.
    pub(crate) retries: proc_macro2::Literal,
    /// The `retry` key, for messages about the argument as a whole.
    pub(crate) key: Ident,
}

/// `conn = ...`: where the block's connection is.
#[derive(Clone)]
pub(crate) enum Conn {
    /// `conn = db`: a parameter of the function.
    Parameter(Ident),
    /// `conn = self`, `conn = self.conn`, `conn = self.inner.conn`: the receiver itself, or a
    /// field of it (the repository pattern).
    Receiver(ReceiverPath),
}

/// `self` and the fields after it, as written.
#[derive(Clone)]
pub(crate) struct ReceiverPath {
    /// The `self` token, spanned on the user's.
    pub(crate) self_token: syn::Token![self],
    /// The fields from `self` to the connection, outermost first; empty for `conn = self`.
    pub(crate) fields: Vec<syn::Member>,
    /// The whole value, for messages about it.
    pub(crate) tokens: TokenStream,
}

impl Conn {
    /// How messages quote the value: `db`, `self.conn`.
    pub(crate) fn text(&self) -> String {
        match self {
            Conn::Parameter(name) => name.to_string(),
            Conn::Receiver(path) => path.tokens.to_string().replace(' ', ""),
        }
    }
}

/// The parsed arguments of `#[atomic(...)]`.
#[derive(Default)]
pub(crate) struct AtomicArgs {
    pub(crate) using: Option<Alias>,
    pub(crate) savepoint: Option<Flag>,
    pub(crate) durable: Option<Flag>,
    pub(crate) isolation: Option<Choice>,
    pub(crate) read_only: Option<Flag>,
    pub(crate) replica: Option<Flag>,
    pub(crate) begin: Option<Choice>,
    pub(crate) retry: Option<Retry>,
    pub(crate) conn: Option<Conn>,
    pub(crate) ambient: Option<Flag>,
    pub(crate) krate: Option<TokenStream>,
}

/// The parsed arguments of `#[non_atomic_requests(...)]`.
#[derive(Default)]
pub(crate) struct NonAtomicRequestsArgs {
    pub(crate) using: Option<Alias>,
    pub(crate) krate: Option<TokenStream>,
}

impl AtomicArgs {
    pub(crate) fn parse(args: TokenStream) -> syn::Result<Self> {
        let mut parsed = AtomicArgs::default();
        let errors = for_each_argument(args, Attribute::Atomic, |argument| {
            match argument.key {
                Key::Using => parsed.using = Some(alias(argument)?),
                Key::Savepoint => parsed.savepoint = Some(flag(argument)?),
                Key::Durable => parsed.durable = Some(flag(argument)?),
                Key::Isolation => parsed.isolation = Some(choice(argument, &ISOLATION)?),
                Key::ReadOnly => parsed.read_only = Some(flag(argument)?),
                Key::Replica => parsed.replica = Some(flag(argument)?),
                Key::Begin => parsed.begin = Some(choice(argument, &BEGIN)?),
                Key::Retry => parsed.retry = Some(retry(argument)?),
                Key::Conn => parsed.conn = Some(connection(argument)?),
                Key::Ambient => parsed.ambient = Some(flag(argument)?),
                Key::Crate => parsed.krate = Some(crate_path(argument)?),
                // Refused by `check_key` before they get here.
                Key::Setup | Key::Transaction => {
                    return Err(not_taken(&argument.ident, Attribute::Atomic));
                }
            }
            Ok(())
        });
        errors.finish(parsed)
    }
}

impl NonAtomicRequestsArgs {
    pub(crate) fn parse(args: TokenStream) -> syn::Result<Self> {
        let mut parsed = NonAtomicRequestsArgs::default();
        let errors = for_each_argument(args, Attribute::NonAtomicRequests, |argument| {
            match argument.key {
                Key::Using => parsed.using = Some(alias(argument)?),
                Key::Crate => parsed.krate = Some(crate_path(argument)?),
                // Refused by `check_key` before they get here.
                Key::Savepoint
                | Key::Durable
                | Key::Isolation
                | Key::ReadOnly
                | Key::Replica
                | Key::Begin
                | Key::Retry
                | Key::Conn
                | Key::Ambient
                | Key::Setup
                | Key::Transaction => {
                    return Err(not_taken(&argument.ident, Attribute::NonAtomicRequests));
                }
            }
            Ok(())
        });
        errors.finish(parsed)
    }
}

/// The parsed arguments of `#[diesel_atomic::test(...)]`.
#[derive(Default)]
pub(crate) struct TestArgs {
    /// `setup = path`: the function that returns the test's `Databases`.
    pub(crate) setup: Option<Path>,
    pub(crate) transaction: Option<Flag>,
    pub(crate) krate: Option<TokenStream>,
}

impl TestArgs {
    pub(crate) fn parse(args: TokenStream) -> syn::Result<Self> {
        let mut parsed = TestArgs::default();
        let errors = for_each_argument(args, Attribute::Test, |argument| {
            match argument.key {
                Key::Setup => parsed.setup = Some(setup(argument)?),
                Key::Transaction => parsed.transaction = Some(flag(argument)?),
                Key::Crate => parsed.krate = Some(crate_path(argument)?),
                // Refused by `check_key` before they get here.
                Key::Using
                | Key::Savepoint
                | Key::Durable
                | Key::Isolation
                | Key::ReadOnly
                | Key::Replica
                | Key::Begin
                | Key::Retry
                | Key::Conn
                | Key::Ambient => {
                    return Err(not_taken(&argument.ident, Attribute::Test));
                }
            }
            Ok(())
        });
        errors.finish(parsed)
    }
}

/// The parsed arguments of either attribute.
pub(crate) enum AttributeArgs {
    // Boxed: many more arguments than `#[non_atomic_requests]`'s two.
    Atomic(Box<AtomicArgs>),
    NonAtomicRequests(NonAtomicRequestsArgs),
}

impl AttributeArgs {
    pub(crate) fn parse(attribute: Attribute, args: TokenStream) -> syn::Result<Self> {
        match attribute {
            Attribute::Atomic => {
                AtomicArgs::parse(args).map(|args| AttributeArgs::Atomic(Box::new(args)))
            }
            Attribute::NonAtomicRequests => {
                NonAtomicRequestsArgs::parse(args).map(AttributeArgs::NonAtomicRequests)
            }
            // `from_path` never recognises it, so it is never stacked.
            Attribute::Test => Err(syn::Error::new_spanned(
                args,
                "#[diesel_atomic::test] does not stack with #[atomic] or #[non_atomic_requests]",
            )),
        }
    }

    pub(crate) fn attribute(&self) -> Attribute {
        match self {
            AttributeArgs::Atomic(_) => Attribute::Atomic,
            AttributeArgs::NonAtomicRequests(_) => Attribute::NonAtomicRequests,
        }
    }

    /// The alias the attribute applies to.
    pub(crate) fn alias(&self) -> &str {
        let using = match self {
            AttributeArgs::Atomic(args) => args.using.as_ref(),
            AttributeArgs::NonAtomicRequests(args) => args.using.as_ref(),
        };
        Alias::name_or_default(using)
    }
}

/// One of our attributes on the function, parsed: the one expanding, or one written below it
/// that the expansion takes over (`written`).
pub(crate) struct Layer {
    pub(crate) args: AttributeArgs,
    /// The attribute as written; `None` for the one expanding, of which the macro only gets
    /// the arguments.
    pub(crate) written: Option<syn::Attribute>,
}

/// One of our attributes written below the one expanding, on the same function.
pub(crate) struct Stacked {
    pub(crate) attribute: Attribute,
    pub(crate) args: TokenStream,
    /// As written, for messages about the attribute as a whole.
    pub(crate) written: syn::Attribute,
}

/// Takes our attributes (recognised by the last segment of their path) out of `attrs`, in
/// the order they are written. The `#[atomic = ...]` form is left for rustc to refuse.
pub(crate) fn take_stacked(attrs: &mut Vec<syn::Attribute>) -> Vec<Stacked> {
    let mut stacked = Vec::new();
    attrs.retain(|attr| {
        let Some(attribute) = Attribute::from_path(attr.path()) else {
            return true;
        };
        let args = match &attr.meta {
            syn::Meta::Path(_) => TokenStream::new(),
            syn::Meta::List(list) => list.tokens.clone(),
            syn::Meta::NameValue(_) => return true,
        };
        stacked.push(Stacked {
            attribute,
            args,
            written: attr.clone(),
        });
        false
    });
    stacked
}

/// One well-formed `key = value` argument with a known key given once.
struct Argument {
    key: Key,
    /// The key as written, for messages about it.
    ident: Ident,
    value: TokenStream,
    /// The whole `key = value`, for messages about the argument as a whole.
    tokens: TokenStream,
}

/// Splits the arguments at top-level commas and hands each well-formed one, in order, to
/// `each`; every problem, from the shape or from `each`, is collected.
fn for_each_argument(
    args: TokenStream,
    attribute: Attribute,
    mut each: impl FnMut(&Argument) -> syn::Result<()>,
) -> Errors {
    let mut errors = Errors::default();
    let mut seen: Vec<Key> = Vec::new();
    for segment in split_at_commas(args) {
        let Some(argument) = errors.keep(segment.and_then(|segment| argument(segment, attribute)))
        else {
            continue;
        };
        if seen.contains(&argument.key) {
            errors.push(syn::Error::new_spanned(
                &argument.ident,
                format!("`{}` is given more than once; keep one", argument.ident),
            ));
        } else {
            seen.push(argument.key);
            errors.keep(each(&argument));
        }
    }
    errors
}

/// The token trees between top-level commas, in order. A trailing comma is fine; an empty
/// argument (`,,` or a leading comma) is an error on its comma.
fn split_at_commas(args: TokenStream) -> Vec<syn::Result<Vec<TokenTree>>> {
    let mut segments = Vec::new();
    let mut current = Vec::new();
    for token in args {
        match &token {
            TokenTree::Punct(punct) if punct.as_char() == ',' => {
                if current.is_empty() {
                    segments.push(Err(syn::Error::new(
                        punct.span(),
                        "expected an argument before this `,`",
                    )));
                } else {
                    segments.push(Ok(std::mem::take(&mut current)));
                }
            }
            _ => current.push(token),
        }
    }
    if !current.is_empty() {
        segments.push(Ok(current));
    }
    segments
}

/// Checks one argument's shape: a known key, then `=`, then a value.
fn argument(segment: Vec<TokenTree>, attribute: Attribute) -> syn::Result<Argument> {
    let tokens: TokenStream = segment.iter().cloned().collect();
    let mut rest = segment.into_iter();
    let ident = match rest.next() {
        Some(TokenTree::Ident(ident)) => ident,
        _ => {
            return Err(syn::Error::new_spanned(
                &tokens,
                format!(
                    "expected an argument such as `using = \"other\"`, found `{tokens}`; {}",
                    expected_keys(attribute)
                ),
            ));
        }
    };
    let row = check_key(&ident, attribute)?;
    let (name, example) = (row.name, row.example);
    match rest.next() {
        None => Err(syn::Error::new_spanned(
            &ident,
            format!("`{name}` needs a value: `{example}`"),
        )),
        Some(TokenTree::Punct(eq))
            if eq.as_char() == '=' && eq.spacing() == proc_macro2::Spacing::Alone =>
        {
            let value: TokenStream = rest.collect();
            if value.is_empty() {
                return Err(syn::Error::new(
                    eq.span(),
                    format!("`{name} =` needs a value: `{example}`"),
                ));
            }
            Ok(Argument {
                key: row.key,
                ident,
                value,
                tokens,
            })
        }
        Some(TokenTree::Group(group)) if group.delimiter() == Delimiter::Parenthesis => {
            let inner = group.stream();
            let suggestion = if inner.is_empty() {
                example.to_owned()
            } else if matches!(row.key, Key::Isolation | Key::Begin)
                && single_ident(&inner).is_some()
            {
                // Their values are strings: `isolation(serializable)` is
                // `isolation = "serializable"`.
                format!("{name} = \"{inner}\"")
            } else {
                format!("{name} = {inner}")
            };
            Err(syn::Error::new_spanned(
                &tokens,
                format!("`{name}(...)` is not supported; write `{suggestion}`"),
            ))
        }
        Some(other) => {
            let after: TokenStream = std::iter::once(other).chain(rest).collect();
            Err(syn::Error::new_spanned(
                &after,
                format!("expected `=` after `{name}`, as in `{example}`"),
            ))
        }
    }
}

/// The row of a key the attribute takes; else an error naming the keys it does take.
fn check_key(ident: &Ident, attribute: Attribute) -> syn::Result<&'static KeyRow> {
    let name = ident.to_string();
    if let Some(row) = attribute.keys().find(|row| row.name == name) {
        return Ok(row);
    }
    if KEYS.iter().any(|row| row.name == name) {
        return Err(not_taken(ident, attribute));
    }
    let hint = suggest::nearest(&name, &attribute.key_names())
        .map(|nearest| format!(" did you mean `{nearest}`?"))
        .unwrap_or_default();
    Err(syn::Error::new_spanned(
        ident,
        format!(
            "unknown argument `{name}`;{hint} {}",
            expected_keys(attribute)
        ),
    ))
}

/// A key of another of our attributes (`savepoint` given to `#[non_atomic_requests]`).
fn not_taken(ident: &Ident, attribute: Attribute) -> syn::Error {
    let name = ident.to_string();
    let owners: Vec<&str> = KEYS
        .iter()
        .filter(|row| row.name == name)
        .flat_map(|row| row.attributes.iter().map(|owner| owner.name()))
        .collect();
    let owners = match owners.split_last() {
        Some((last, [])) => (*last).to_owned(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
        None => "another attribute".to_owned(),
    };
    syn::Error::new_spanned(
        ident,
        format!(
            "`{ident}` is an argument of {owners}, not of {}, which takes only {}",
            attribute.name(),
            listed_keys(attribute)
        ),
    )
}

/// "#[atomic] takes `using`, `savepoint`, ... and `crate`".
fn expected_keys(attribute: Attribute) -> String {
    format!("{} takes {}", attribute.name(), listed_keys(attribute))
}

/// "`using`, `savepoint`, ... and `crate`".
fn listed_keys(attribute: Attribute) -> String {
    let keys: Vec<String> = attribute
        .keys()
        .map(|row| format!("`{}`", row.name))
        .collect();
    match keys.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
        None => "no arguments".to_owned(),
    }
}

/// `using = "alias"`: a non-empty name of letters, digits, `_` and `-`.
fn alias(argument: &Argument) -> syn::Result<Alias> {
    let literal = match syn::parse2::<Lit>(argument.value.clone()) {
        Ok(Lit::Str(literal)) if literal.suffix().is_empty() => literal,
        _ => {
            let suggestion = match single_ident(&argument.value) {
                Some(ident) => format!("`using = \"{ident}\"`"),
                None => "`using = \"other\"`".to_owned(),
            };
            return Err(syn::Error::new_spanned(
                &argument.value,
                format!("`using` takes the database alias as a string: {suggestion}"),
            ));
        }
    };
    let name = literal.value();
    let problem = if name.is_empty() {
        Some("the alias is empty".to_owned())
    } else if name.chars().any(char::is_whitespace) {
        Some(format!("the alias {name:?} contains whitespace"))
    } else {
        name.chars()
            .find(|&c| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
            .map(|c| format!("the alias {name:?} contains {c:?}"))
    };
    match problem {
        Some(problem) => Err(syn::Error::new_spanned(
            &literal,
            format!(
                "{problem}; an alias is the name of a configured database, made of letters, \
                 digits, `_` and `-`, such as \"default\" or \"replica-1\""
            ),
        )),
        None => Ok(Alias {
            name,
            span: literal.span(),
        }),
    }
}

/// `savepoint = false`, `durable = true`.
fn flag(argument: &Argument) -> syn::Result<Flag> {
    match syn::parse2::<Lit>(argument.value.clone()) {
        Ok(Lit::Bool(value)) => Ok(Flag {
            value: value.value,
            key: argument.ident.clone(),
            tokens: argument.tokens.clone(),
        }),
        parsed => {
            let key = &argument.ident;
            let quoted = match parsed {
                Ok(Lit::Str(text)) if matches!(text.value().as_str(), "true" | "false") => {
                    format!(", without quotes: `{key} = {}`", text.value())
                }
                _ => format!(": `{key} = true` or `{key} = false`"),
            };
            Err(syn::Error::new_spanned(
                &argument.value,
                format!("`{key}` takes a bool{quoted}"),
            ))
        }
    }
}

/// What a string-valued argument with a fixed set of names is called in messages.
struct Choices {
    key: &'static str,
    /// "isolation level", for "unknown isolation level ...".
    what: &'static str,
    /// "the isolation level", for "`isolation` takes the isolation level as a string".
    takes: &'static str,
    /// The names users write and the variants they stand for.
    names: &'static [(&'static str, &'static str)],
    /// The name to suggest when nothing the user wrote is close to one.
    example: &'static str,
}

const ISOLATION: Choices = Choices {
    key: "isolation",
    what: "isolation level",
    takes: "the isolation level",
    names: ISOLATION_LEVELS,
    example: "serializable",
};

const BEGIN: Choices = Choices {
    key: "begin",
    what: "SQLite lock mode",
    takes: "SQLite's lock mode",
    names: BEGIN_MODES,
    example: "immediate",
};

impl Choices {
    fn names(&self) -> Vec<&'static str> {
        self.names.iter().map(|(name, _)| *name).collect()
    }

    /// "\"deferred\", \"immediate\" or \"exclusive\"".
    fn listed(&self) -> String {
        let names: Vec<String> = self
            .names()
            .iter()
            .map(|name| format!("{name:?}"))
            .collect();
        match names.split_last() {
            Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
            _ => names.concat(),
        }
    }
}

/// `isolation = "serializable"`, `begin = "immediate"`: one of `choices`' names, as a string.
fn choice(argument: &Argument, choices: &Choices) -> syn::Result<Choice> {
    let key = choices.key;
    let names = choices.names();
    let literal = match syn::parse2::<Lit>(argument.value.clone()) {
        Ok(Lit::Str(literal)) if literal.suffix().is_empty() => literal,
        _ => {
            // `isolation = serializable`, `isolation = Isolation::RepeatableRead`: the name
            // the user meant, in a string.
            let meant = last_ident(&argument.value)
                .and_then(|ident| suggest::nearest(&ident.to_string(), &names))
                .unwrap_or(choices.example);
            return Err(syn::Error::new_spanned(
                &argument.value,
                format!(
                    "`{key}` takes {} as a string: `{key} = \"{meant}\"`",
                    choices.takes
                ),
            ));
        }
    };
    let name = literal.value();
    match choices.names.iter().find(|(known, _)| *known == name) {
        Some((_, variant)) => Ok(Choice {
            variant: Ident::new(variant, literal.span()),
        }),
        None => {
            let hint = suggest::nearest(&name, &names)
                .map(|nearest| format!(" did you mean \"{nearest}\"?"))
                .unwrap_or_default();
            Err(syn::Error::new_spanned(
                &literal,
                format!(
                    "unknown {} {name:?};{hint} `{key}` takes {}",
                    choices.what,
                    choices.listed()
                ),
            ))
        }
    }
}

/// `retry = 5`: the number of reruns, an unsuffixed (or `u32`) integer of at least 1.
fn retry(argument: &Argument) -> syn::Result<Retry> {
    const EXAMPLE: &str = "`retry = 5`";
    let value = &argument.value;
    let problem = match syn::parse2::<Lit>(value.clone()) {
        Ok(Lit::Int(number)) => {
            let digits = number.base10_digits();
            if let Some(magnitude) = digits.strip_prefix('-') {
                let example = match magnitude.parse::<u32>() {
                    Ok(1..) => format!("`retry = {magnitude}`"),
                    _ => EXAMPLE.to_owned(),
                };
                format!("`retry` takes the number of reruns, which cannot be negative: {example}")
            } else if !matches!(number.suffix(), "" | "u32") {
                format!("`retry` takes the number of reruns without a suffix: `retry = {digits}`")
            } else {
                match number.base10_parse::<u32>() {
                    Ok(0) => format!(
                        "`retry = 0` never reruns the block; remove `retry`, or give the number \
                         of reruns such as {EXAMPLE}"
                    ),
                    Ok(retries) => {
                        let mut literal = proc_macro2::Literal::u32_unsuffixed(retries);
                        literal.set_span(number.span());
                        return Ok(Retry {
                            retries: literal,
                            key: argument.ident.clone(),
                        });
                    }
                    Err(_) => format!(
                        "`retry = {digits}` is more reruns than a `u32` holds; a few are \
                         enough, such as {EXAMPLE}"
                    ),
                }
            }
        }
        Ok(Lit::Str(text)) if text.value().trim().parse::<u32>().is_ok_and(|n| n > 0) => {
            format!(
                "`retry` takes the number of reruns, without quotes: `retry = {}`",
                text.value().trim()
            )
        }
        _ => format!("`retry` takes the number of reruns as an integer: {EXAMPLE}"),
    };
    Err(syn::Error::new_spanned(value, problem))
}

/// `conn = name` (a parameter) or `conn = self.field` (the receiver or a field of it),
/// without quotes.
fn connection(argument: &Argument) -> syn::Result<Conn> {
    if let Some(conn) = connection_value(&argument.value) {
        return Ok(conn);
    }
    let message = match syn::parse2::<LitStr>(argument.value.clone()) {
        Ok(text)
            if text
                .value()
                .parse::<TokenStream>()
                .is_ok_and(|value| connection_value(&value).is_some()) =>
        {
            format!(
                "`conn` takes the name of the connection parameter, without quotes: `conn = {}`",
                text.value()
            )
        }
        _ => "`conn` takes the name of the connection parameter, such as `conn = db`, or a \
              field of `self` that holds the connection, such as `conn = self.conn`"
            .to_owned(),
    };
    Err(syn::Error::new_spanned(&argument.value, message))
}

/// `db`, `self`, `self.conn`, `self.0.conn`; anything else (a method call, an index, a path)
/// is not a place the macro can reach the connection through.
fn connection_value(value: &TokenStream) -> Option<Conn> {
    if let Ok(name) = syn::parse2::<Ident>(value.clone()) {
        return Some(Conn::Parameter(name));
    }
    let mut expr = syn::parse2::<syn::Expr>(value.clone()).ok()?;
    let mut fields = Vec::new();
    loop {
        match expr {
            syn::Expr::Field(field) if field.attrs.is_empty() => {
                fields.push(field.member);
                expr = *field.base;
            }
            syn::Expr::Path(path) if path.attrs.is_empty() && path.qself.is_none() => {
                let receiver = path.path.get_ident().filter(|ident| *ident == "self")?;
                let self_token = syn::Token![self](receiver.span());
                fields.reverse();
                return Some(Conn::Receiver(ReceiverPath {
                    self_token,
                    fields,
                    tokens: value.clone(),
                }));
            }
            _ => return None,
        }
    }
}

/// `crate = "path"`: where the `diesel_atomic` crate is, as a string. The path's tokens
/// point at the string, so an unresolved path is reported there.
fn crate_path(argument: &Argument) -> syn::Result<TokenStream> {
    let Ok(literal) = syn::parse2::<LitStr>(argument.value.clone()) else {
        let suggestion = match syn::parse2::<Path>(argument.value.clone()) {
            Ok(path) => format!("`crate = \"{}\"`", path_text(&path)),
            Err(_) => "`crate = \"diesel_atomic\"`".to_owned(),
        };
        return Err(syn::Error::new_spanned(
            &argument.value,
            format!("`crate` takes a path in a string: {suggestion}"),
        ));
    };
    match literal.parse::<Path>() {
        Ok(path)
            if path
                .segments
                .iter()
                .all(|segment| segment.arguments.is_none()) =>
        {
            Ok(path.to_token_stream())
        }
        _ => Err(syn::Error::new_spanned(
            &literal,
            format!(
                "`crate = {:?}` is not a path to a crate or module; write the name the \
                 dependency has in your crate, such as `crate = \"diesel_atomic\"`",
                literal.value()
            ),
        )),
    }
}

/// `setup = path::to::function`: a path, without quotes (the function is checked by rustc
/// where the path is written).
fn setup(argument: &Argument) -> syn::Result<Path> {
    if let Ok(path) = syn::parse2::<Path>(argument.value.clone()) {
        return Ok(path);
    }
    let message = match syn::parse2::<LitStr>(argument.value.clone()) {
        Ok(text) if text.parse::<Path>().is_ok() => format!(
            "`setup` takes the path of a function, without quotes: `setup = {}`",
            text.value()
        ),
        _ => "`setup` takes the path of a function that returns the test's `Databases`, such \
              as `setup = test_databases`"
            .to_owned(),
    };
    Err(syn::Error::new_spanned(&argument.value, message))
}

fn single_ident(tokens: &TokenStream) -> Option<Ident> {
    let mut trees = tokens.clone().into_iter();
    match (trees.next(), trees.next()) {
        (Some(TokenTree::Ident(ident)), None) => Some(ident),
        _ => None,
    }
}

/// The last identifier of a path (`Isolation::Serializable` gives `Serializable`), or the one
/// identifier (`true` is an identifier too).
fn last_ident(tokens: &TokenStream) -> Option<Ident> {
    match syn::parse2::<Path>(tokens.clone()) {
        Ok(path) => path.segments.last().map(|segment| segment.ident.clone()),
        Err(_) => single_ident(tokens),
    }
}

fn path_text(path: &Path) -> String {
    path.to_token_stream().to_string().replace(' ', "")
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;

    fn atomic_errors(args: TokenStream) -> Vec<String> {
        match AtomicArgs::parse(args) {
            Ok(_) => Vec::new(),
            Err(error) => error.into_iter().map(|error| error.to_string()).collect(),
        }
    }

    fn non_atomic_errors(args: TokenStream) -> Vec<String> {
        match NonAtomicRequestsArgs::parse(args) {
            Ok(_) => Vec::new(),
            Err(error) => error.into_iter().map(|error| error.to_string()).collect(),
        }
    }

    #[test]
    fn parses_every_key() {
        let args = AtomicArgs::parse(quote!(
            using = "other",
            savepoint = false,
            durable = true,
            isolation = "repeatable_read",
            read_only = true,
            replica = true,
            begin = "exclusive",
            retry = 4,
            conn = c,
            ambient = false,
            crate = "x::y",
        ))
        .unwrap();
        let replica = args.replica.unwrap();
        assert!(replica.value);
        assert_eq!(replica.key.to_string(), "replica");
        assert_eq!(
            args.isolation.unwrap().variant.to_string(),
            "RepeatableRead"
        );
        assert!(args.read_only.unwrap().value);
        assert_eq!(args.begin.unwrap().variant.to_string(), "Exclusive");
        let retry = args.retry.unwrap();
        assert_eq!(retry.retries.to_string(), "4");
        assert_eq!(retry.key.to_string(), "retry");
        assert_eq!(args.using.unwrap().name, "other");
        assert!(!args.savepoint.unwrap().value);
        assert!(args.durable.unwrap().value);
        assert_eq!(args.conn.unwrap().text(), "c");
        assert!(!args.ambient.unwrap().value);
        assert_eq!(args.krate.unwrap().to_string(), "x :: y");
    }

    #[test]
    fn conn_names_a_parameter_or_a_field_of_self() {
        for (args, expected) in [
            (quote!(conn = db), "db"),
            (quote!(conn = self), "self"),
            (quote!(conn = self.conn), "self.conn"),
            (quote!(conn = self.inner.conn), "self.inner.conn"),
            (quote!(conn = self.0), "self.0"),
        ] {
            let conn = AtomicArgs::parse(args.clone()).unwrap().conn.unwrap();
            assert_eq!(conn.text(), expected, "{args}");
        }
        let Some(Conn::Receiver(path)) = AtomicArgs::parse(quote!(conn = self.inner.conn))
            .unwrap()
            .conn
        else {
            panic!("a field of `self`");
        };
        let fields: Vec<String> = path
            .fields
            .iter()
            .map(|field| field.to_token_stream().to_string())
            .collect();
        assert_eq!(fields, ["inner", "conn"]);
    }

    #[test]
    fn conn_refuses_what_is_not_a_parameter_or_a_field_of_self() {
        for args in [
            quote!(conn = self.conn()),
            quote!(conn = self[0]),
            quote!(conn = other.conn),
            quote!(conn = Self),
            quote!(conn = self::conn),
            quote!(conn = 1),
        ] {
            assert_eq!(
                atomic_errors(args.clone()),
                [
                    "`conn` takes the name of the connection parameter, such as `conn = db`, or a \
                  field of `self` that holds the connection, such as `conn = self.conn`"
                        .to_owned()
                ],
                "{args}"
            );
        }
        assert_eq!(
            atomic_errors(quote!(conn = "self.conn")),
            [
                "`conn` takes the name of the connection parameter, without quotes: \
              `conn = self.conn`"
                    .to_owned()
            ]
        );
    }

    #[test]
    fn ambient_takes_a_bool() {
        assert!(
            AtomicArgs::parse(quote!(ambient = true))
                .unwrap()
                .ambient
                .unwrap()
                .value
        );
        assert_eq!(
            atomic_errors(quote!(ambient = "true")),
            ["`ambient` takes a bool, without quotes: `ambient = true`".to_owned()]
        );
        assert_eq!(
            atomic_errors(quote!(ambient)),
            ["`ambient` needs a value: `ambient = true`".to_owned()]
        );
    }

    #[test]
    fn every_example_in_messages_parses() {
        for attribute in [
            Attribute::Atomic,
            Attribute::NonAtomicRequests,
            Attribute::Test,
        ] {
            for row in attribute.keys() {
                let example: TokenStream = row.example.parse().unwrap();
                let parsed = match attribute {
                    Attribute::Atomic => AtomicArgs::parse(example).err(),
                    Attribute::NonAtomicRequests => NonAtomicRequestsArgs::parse(example).err(),
                    Attribute::Test => TestArgs::parse(example).err(),
                };
                assert!(parsed.is_none(), "{}: {parsed:?}", row.example);
                assert!(row.example.starts_with(&format!("{} = ", row.name)));
            }
        }
        let names: Vec<&str> = KEYS.iter().map(|row| row.name).collect();
        for (index, name) in names.iter().enumerate() {
            assert!(!names[..index].contains(name), "`{name}` has two rows");
        }
    }

    /// The first column of a docs table in lib.rs: `/// | `using = "alias"` | ...`.
    fn documented_keys(docs: &str) -> Vec<&str> {
        docs.lines()
            .filter_map(|line| line.trim().strip_prefix("/// | `"))
            .filter_map(|cell| cell.split_once(" ="))
            .map(|(key, _)| key)
            .collect()
    }

    #[test]
    fn the_docs_tables_list_exactly_the_keys() {
        const LIB: &str = include_str!("lib.rs");
        let (atomic_docs, rest) = LIB.split_once("pub fn atomic(").unwrap();
        let (non_atomic_requests_docs, rest) =
            rest.split_once("pub fn non_atomic_requests(").unwrap();
        let (test_docs, _) = rest.split_once("pub fn test(").unwrap();
        assert_eq!(documented_keys(atomic_docs), Attribute::Atomic.key_names());
        assert_eq!(
            documented_keys(non_atomic_requests_docs),
            Attribute::NonAtomicRequests.key_names()
        );
        assert_eq!(documented_keys(test_docs), Attribute::Test.key_names());
    }

    #[test]
    fn no_arguments_is_the_default() {
        let args = AtomicArgs::parse(quote!()).unwrap();
        assert!(args.using.is_none() && args.savepoint.is_none() && args.krate.is_none());
        assert!(
            NonAtomicRequestsArgs::parse(quote!())
                .unwrap()
                .using
                .is_none()
        );
    }

    #[test]
    fn unknown_key_suggests_the_nearest() {
        let errors = atomic_errors(quote!(usin = "x"));
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].starts_with("unknown argument `usin`; did you mean `using`?"),
            "{errors:?}"
        );
        assert!(
            errors[0].ends_with(
                "`savepoint`, `durable`, `isolation`, `read_only`, `replica`, `begin`, `retry`, \
                 `conn`, `ambient` and `crate`"
            ),
            "{errors:?}"
        );
    }

    #[test]
    fn unknown_key_far_from_any_lists_the_keys() {
        let errors = atomic_errors(quote!(timeout = 30));
        assert!(!errors[0].contains("did you mean"), "{errors:?}");
        assert!(errors[0].contains("#[atomic] takes `using`"), "{errors:?}");
    }

    #[test]
    fn new_keys_are_suggested_for_typos() {
        for (typo, key) in [
            ("isolaton", "isolation"),
            ("isolation_level", "isolation"),
            ("readonly", "read_only"),
            ("read_onyl", "read_only"),
            ("replicas", "replica"),
            ("replika", "replica"),
            ("begn", "begin"),
            ("retyr", "retry"),
        ] {
            let typo = Ident::new(typo, Span::call_site());
            let errors = atomic_errors(quote!(#typo = 1));
            assert!(
                errors[0].contains(&format!("did you mean `{key}`?")),
                "{typo}: {errors:?}"
            );
        }
    }

    #[test]
    fn atomic_keys_on_non_atomic_requests_say_where_they_belong() {
        for key in [
            "savepoint",
            "durable",
            "isolation",
            "read_only",
            "replica",
            "begin",
            "retry",
            "conn",
            "ambient",
        ] {
            let key = Ident::new(key, Span::call_site());
            let errors = non_atomic_errors(quote!(#key = 1));
            assert_eq!(
                errors,
                [format!(
                    "`{key}` is an argument of #[atomic], not of #[non_atomic_requests], which \
                     takes only `using` and `crate`"
                )]
            );
        }
    }

    #[test]
    fn every_isolation_level_and_lock_mode_is_known() {
        for (name, variant) in ISOLATION_LEVELS {
            let args = AtomicArgs::parse(quote!(isolation = #name)).unwrap();
            assert_eq!(args.isolation.unwrap().variant, variant);
        }
        for (name, variant) in BEGIN_MODES {
            let args = AtomicArgs::parse(quote!(begin = #name)).unwrap();
            assert_eq!(args.begin.unwrap().variant, variant);
        }
    }

    #[test]
    fn unknown_isolation_levels_suggest_the_nearest() {
        for (level, nearest) in [
            ("serialisable", "serializable"),
            ("SERIALIZABLE", "serializable"),
            ("repeatable read", "repeatable_read"),
            ("repeatable-read", "repeatable_read"),
            ("READ COMMITTED", "read_committed"),
            ("read_uncomitted", "read_uncommitted"),
        ] {
            let errors = atomic_errors(quote!(isolation = #level));
            assert_eq!(
                errors,
                [format!(
                    "unknown isolation level {level:?}; did you mean {nearest:?}? `isolation` \
                     takes \"serializable\", \"repeatable_read\", \"read_committed\" or \
                     \"read_uncommitted\""
                )]
            );
        }
        let errors = atomic_errors(quote!(isolation = "snapshot"));
        assert!(!errors[0].contains("did you mean"), "{errors:?}");
        assert!(errors[0].contains("\"read_uncommitted\""), "{errors:?}");
    }

    #[test]
    fn unknown_lock_modes_suggest_the_nearest() {
        assert_eq!(
            atomic_errors(quote!(begin = "immedate")),
            [
                "unknown SQLite lock mode \"immedate\"; did you mean \"immediate\"? `begin` takes \
              \"deferred\", \"immediate\" or \"exclusive\""
                    .to_owned()
            ]
        );
        assert!(
            atomic_errors(quote!(begin = "EXCLUSIVE"))[0].contains("did you mean \"exclusive\"?")
        );
    }

    #[test]
    fn isolation_and_begin_take_strings() {
        for (args, expected) in [
            (
                quote!(isolation = serializable),
                "`isolation` takes the isolation level as a string: `isolation = \"serializable\"`",
            ),
            (
                quote!(isolation = Isolation::RepeatableRead),
                "`isolation` takes the isolation level as a string: `isolation = \"repeatable_read\"`",
            ),
            (
                quote!(isolation = true),
                "`isolation` takes the isolation level as a string: `isolation = \"serializable\"`",
            ),
            (
                quote!(isolation = 4),
                "`isolation` takes the isolation level as a string: `isolation = \"serializable\"`",
            ),
            (
                quote!(begin = Immediate),
                "`begin` takes SQLite's lock mode as a string: `begin = \"immediate\"`",
            ),
            (
                quote!(begin = 1),
                "`begin` takes SQLite's lock mode as a string: `begin = \"immediate\"`",
            ),
        ] {
            assert_eq!(atomic_errors(args.clone()), [expected.to_owned()], "{args}");
        }
    }

    #[test]
    fn read_only_takes_a_bool() {
        assert!(
            !AtomicArgs::parse(quote!(read_only = false))
                .unwrap()
                .read_only
                .unwrap()
                .value
        );
        assert_eq!(
            atomic_errors(quote!(read_only = "true")),
            ["`read_only` takes a bool, without quotes: `read_only = true`".to_owned()]
        );
        assert_eq!(
            atomic_errors(quote!(read_only = 1)),
            ["`read_only` takes a bool: `read_only = true` or `read_only = false`".to_owned()]
        );
    }

    #[test]
    fn replica_takes_a_bool() {
        assert!(
            !AtomicArgs::parse(quote!(replica = false))
                .unwrap()
                .replica
                .unwrap()
                .value
        );
        assert_eq!(
            atomic_errors(quote!(replica = "true")),
            ["`replica` takes a bool, without quotes: `replica = true`".to_owned()]
        );
    }

    #[test]
    fn retry_takes_a_positive_u32() {
        for (args, retries) in [
            (quote!(retry = 1), "1"),
            (quote!(retry = 5u32), "5"),
            (quote!(retry = 1_000), "1000"),
            (quote!(retry = 4294967295), "4294967295"),
        ] {
            let parsed = AtomicArgs::parse(args.clone()).unwrap();
            assert_eq!(parsed.retry.unwrap().retries.to_string(), retries, "{args}");
        }
    }

    #[test]
    fn retry_values_of_the_wrong_kind_are_refused() {
        for (args, expected) in [
            (
                quote!(retry = 0),
                "`retry = 0` never reruns the block; remove `retry`, or give the number of reruns \
                 such as `retry = 5`",
            ),
            (
                quote!(retry = -3),
                "`retry` takes the number of reruns, which cannot be negative: `retry = 3`",
            ),
            (
                quote!(retry = -0),
                "`retry` takes the number of reruns, which cannot be negative: `retry = 5`",
            ),
            (
                quote!(retry = 3u8),
                "`retry` takes the number of reruns without a suffix: `retry = 3`",
            ),
            (
                quote!(retry = 4294967296),
                "`retry = 4294967296` is more reruns than a `u32` holds; a few are enough, such \
                 as `retry = 5`",
            ),
            (
                quote!(retry = "3"),
                "`retry` takes the number of reruns, without quotes: `retry = 3`",
            ),
            (
                quote!(retry = "0"),
                "`retry` takes the number of reruns as an integer: `retry = 5`",
            ),
            (
                quote!(retry = true),
                "`retry` takes the number of reruns as an integer: `retry = 5`",
            ),
            (
                quote!(retry = 2.5),
                "`retry` takes the number of reruns as an integer: `retry = 5`",
            ),
            (
                quote!(retry = five),
                "`retry` takes the number of reruns as an integer: `retry = 5`",
            ),
        ] {
            assert_eq!(atomic_errors(args.clone()), [expected.to_owned()], "{args}");
        }
    }

    #[test]
    fn new_keys_need_values() {
        assert_eq!(
            atomic_errors(quote!(retry)),
            ["`retry` needs a value: `retry = 5`".to_owned()]
        );
        assert_eq!(
            atomic_errors(quote!(isolation(serializable))),
            [
                "`isolation(...)` is not supported; write `isolation = \"serializable\"`"
                    .to_owned()
            ]
        );
        assert_eq!(
            atomic_errors(quote!(begin =)),
            ["`begin =` needs a value: `begin = \"immediate\"`".to_owned()]
        );
    }

    #[test]
    fn duplicate_keys_are_refused() {
        let errors = atomic_errors(quote!(durable = true, durable = false));
        assert_eq!(
            errors,
            ["`durable` is given more than once; keep one".to_owned()]
        );
        let errors = non_atomic_errors(quote!(using = "a", using = "a"));
        assert_eq!(
            errors,
            ["`using` is given more than once; keep one".to_owned()]
        );
    }

    #[test]
    fn values_of_the_wrong_kind_are_refused() {
        for (args, expected) in [
            (quote!(using = other), "`using = \"other\"`"),
            (quote!(using = 3), "takes the database alias as a string"),
            (
                quote!(savepoint = "no"),
                "`savepoint` takes a bool: `savepoint = true` or",
            ),
            (
                quote!(savepoint = "false"),
                "without quotes: `savepoint = false`",
            ),
            (quote!(durable = 1), "`durable` takes a bool"),
            (quote!(conn = "db"), "without quotes: `conn = db`"),
            (quote!(conn = 1), "`conn` takes the name"),
            (quote!(crate = renamed), "`crate = \"renamed\"`"),
            (quote!(crate = "not a path"), "is not a path"),
            (quote!(crate = "a::<T>"), "is not a path"),
        ] {
            let errors = atomic_errors(args.clone());
            assert_eq!(errors.len(), 1, "{args}: {errors:?}");
            assert!(errors[0].contains(expected), "{args}: {errors:?}");
        }
    }

    #[test]
    fn list_bare_and_valueless_forms_are_refused() {
        assert_eq!(
            atomic_errors(quote!(using("x"))),
            ["`using(...)` is not supported; write `using = \"x\"`".to_owned()]
        );
        assert_eq!(
            atomic_errors(quote!(durable)),
            ["`durable` needs a value: `durable = true`".to_owned()]
        );
        assert_eq!(
            atomic_errors(quote!(using =)),
            ["`using =` needs a value: `using = \"other\"`".to_owned()]
        );
        assert!(atomic_errors(quote!(using: "x"))[0].starts_with("expected `=` after `using`"));
        assert!(atomic_errors(quote!(using == "x"))[0].starts_with("expected `=` after `using`"));
    }

    #[test]
    fn malformed_aliases_are_refused() {
        for (alias, expected) in [
            ("", "the alias is empty"),
            (" other", "contains whitespace"),
            ("a\tb", "contains whitespace"),
            ("replica.1", "contains '.'"),
            ("é", "contains 'é'"),
        ] {
            let errors = atomic_errors(quote!(using = #alias));
            assert_eq!(errors.len(), 1, "{alias:?}: {errors:?}");
            assert!(errors[0].contains(expected), "{alias:?}: {errors:?}");
        }
        assert!(atomic_errors(quote!(using = "replica-1_b")).is_empty());
    }

    #[test]
    fn token_soup_reports_every_problem() {
        let errors = atomic_errors(quote!(= = ,, 3));
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[0].starts_with("expected an argument such as"));
        assert_eq!(errors[1], "expected an argument before this `,`");
        assert!(errors[2].starts_with("expected an argument such as"));
    }

    #[test]
    fn independent_problems_are_reported_together() {
        let errors = atomic_errors(quote!(
            usin = "x",
            savepoint = "no",
            durable = true,
            durable = false
        ));
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(
            errors[1].starts_with("`savepoint` takes a bool"),
            "in order: {errors:?}"
        );
        assert!(errors[2].starts_with("`durable` is given more than once"));
    }

    #[test]
    fn trailing_comma_is_fine_but_a_leading_one_is_not() {
        assert!(atomic_errors(quote!(using = "x",)).is_empty());
        assert_eq!(
            atomic_errors(quote!(, using = "x")),
            ["expected an argument before this `,`".to_owned()]
        );
    }

    #[test]
    fn stacked_attributes_are_taken_in_order() {
        let mut function: syn::ItemFn = syn::parse_quote!(
            #[doc = "kept"]
            #[non_atomic_requests(using = "b")]
            #[inline]
            #[diesel_atomic::atomic]
            #[atomic = "left for rustc"]
            fn f() {}
        );
        let stacked = take_stacked(&mut function.attrs);
        let taken: Vec<(Attribute, String)> = stacked
            .into_iter()
            .map(|stacked| (stacked.attribute, stacked.args.to_string()))
            .collect();
        assert_eq!(
            taken,
            [
                (Attribute::NonAtomicRequests, "using = \"b\"".to_owned()),
                (Attribute::Atomic, String::new()),
            ]
        );
        let kept: Vec<String> = function
            .attrs
            .iter()
            .map(|attr| attr.to_token_stream().to_string())
            .collect();
        assert_eq!(
            kept,
            [
                "# [doc = \"kept\"]",
                "# [inline]",
                "# [atomic = \"left for rustc\"]"
            ]
        );
    }

    #[test]
    fn attribute_args_know_their_alias() {
        let args = AttributeArgs::parse(Attribute::Atomic, quote!()).unwrap();
        assert_eq!(args.alias(), "default");
        let args = AttributeArgs::parse(Attribute::NonAtomicRequests, quote!(using = "b")).unwrap();
        assert_eq!(args.alias(), "b");
        assert_eq!(args.attribute(), Attribute::NonAtomicRequests);
    }

    fn test_errors(args: TokenStream) -> Vec<String> {
        match TestArgs::parse(args) {
            Ok(_) => Vec::new(),
            Err(error) => error.into_iter().map(|error| error.to_string()).collect(),
        }
    }

    #[test]
    fn test_takes_setup_transaction_and_crate() {
        let args = TestArgs::parse(quote!(
            setup = fixtures::databases,
            transaction = false,
            crate = "x",
        ))
        .unwrap();
        assert_eq!(
            args.setup.unwrap().to_token_stream().to_string(),
            "fixtures :: databases"
        );
        assert!(!args.transaction.unwrap().value);
        assert_eq!(args.krate.unwrap().to_string(), "x");
        let defaults = TestArgs::parse(quote!()).unwrap();
        assert!(defaults.setup.is_none() && defaults.transaction.is_none());
    }

    #[test]
    fn test_refuses_unknown_and_duplicate_keys() {
        assert_eq!(
            test_errors(quote!(transactoin = false)),
            [
                "unknown argument `transactoin`; did you mean `transaction`? \
                 #[diesel_atomic::test] takes `setup`, `transaction` and `crate`"
                    .to_owned()
            ]
        );
        assert_eq!(
            test_errors(quote!(transaction = false, transaction = true)),
            ["`transaction` is given more than once; keep one".to_owned()]
        );
    }

    #[test]
    fn keys_of_the_other_attributes_say_where_they_belong() {
        assert_eq!(
            test_errors(quote!(using = "other")),
            [
                "`using` is an argument of #[atomic] and #[non_atomic_requests], not of \
                 #[diesel_atomic::test], which takes only `setup`, `transaction` and `crate`"
                    .to_owned()
            ]
        );
        let errors = atomic_errors(quote!(transaction = false));
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].starts_with(
                "`transaction` is an argument of #[diesel_atomic::test], not of #[atomic]"
            ),
            "{errors:?}"
        );
    }

    #[test]
    fn test_values_of_the_wrong_kind_are_refused() {
        assert_eq!(
            test_errors(quote!(transaction = "false")),
            ["`transaction` takes a bool, without quotes: `transaction = false`".to_owned()]
        );
        assert_eq!(
            test_errors(quote!(transaction = 0)),
            [
                "`transaction` takes a bool: `transaction = true` or `transaction = false`"
                    .to_owned()
            ]
        );
        assert_eq!(
            test_errors(quote!(setup = "fixtures::databases")),
            ["`setup` takes the path of a function, without quotes: `setup = fixtures::databases`"
                .to_owned()]
        );
        for args in [
            quote!(setup = databases()),
            quote!(setup = 1),
            quote!(setup = "a b"),
        ] {
            assert_eq!(
                test_errors(args.clone()),
                ["`setup` takes the path of a function that returns the test's `Databases`, such \
                  as `setup = test_databases`"
                    .to_owned()],
                "{args}"
            );
        }
        assert_eq!(
            test_errors(quote!(setup)),
            ["`setup` needs a value: `setup = test_databases`".to_owned()]
        );
    }
}
