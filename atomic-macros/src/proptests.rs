//! Property tests: whatever the attribute arguments and the item, the expansion returns (a
//! proc macro must never panic) and, for an item that is valid Rust, its output is valid Rust
//! (the item plus `compile_error!`s, or the expanded function).

use proc_macro2::{Delimiter, Group, Ident, Literal, Punct, Spacing, Span, TokenStream, TokenTree};
use proptest::prelude::*;

use crate::args::KEYS;
use crate::expand;

/// Enough to cover every key, value kind and separator many times over; still a few seconds.
const CASES: u32 = 10_000;

/// Identifiers for token soup, besides the attribute's own keys.
const OTHER_IDENTS: &[&str] = &[
    "usin",
    "serializable",
    "Isolation",
    "self",
    "true",
    "false",
    "other",
    "db",
    "x",
    "fn",
    "async",
    "Connection",
];

const STRINGS: &[&str] = &[
    "",
    " ",
    "default",
    "other",
    "a.b",
    "replica-1",
    "diesel_atomic",
    "crate::shim",
    "not a path",
    "a::<T>",
    "true",
    "é",
    "serializable",
    "repeatable read",
    "read_committed",
    "immediate",
    "exclusive",
    "3",
];

const PUNCTS: &[char] = &['=', ',', ':', '#', '!', '-', '<', '>', '&', '.', ';', '\''];

const DELIMITERS: &[Delimiter] = &[
    Delimiter::Parenthesis,
    Delimiter::Bracket,
    Delimiter::Brace,
    Delimiter::None,
];

/// Any token stream, nested up to three groups deep.
///
/// Generated as a list of numbers that a small interpreter turns into tokens (each number
/// opens a group, closes one, or adds a token): far cheaper than nested strategies, which
/// matters at ten thousand cases in a debug build.
fn token_soup() -> impl Strategy<Value = TokenStream> {
    prop::collection::vec(any::<u32>(), 0..24).prop_map(|codes| tokens_from_codes(&codes))
}

fn tokens_from_codes(codes: &[u32]) -> TokenStream {
    // The innermost open group is last; the outermost is the result.
    let mut open: Vec<(Delimiter, Vec<TokenTree>)> = vec![(Delimiter::None, Vec::new())];
    for &code in codes {
        let pick = |choices: usize| (code / 16) as usize % choices;
        let token = match code % 16 {
            0 if open.len() < 4 => {
                open.push((DELIMITERS[pick(DELIMITERS.len())], Vec::new()));
                continue;
            }
            1 if open.len() > 1 => match open.pop() {
                Some((delimiter, trees)) => {
                    TokenTree::Group(Group::new(delimiter, trees.into_iter().collect()))
                }
                None => continue,
            },
            2..=5 => {
                let n = pick(KEYS.len() + OTHER_IDENTS.len());
                let ident = KEYS
                    .get(n)
                    .map_or_else(|| OTHER_IDENTS[n - KEYS.len()], |row| row.name);
                TokenTree::Ident(Ident::new(ident, Span::call_site()))
            }
            6 => TokenTree::Ident(Ident::new_raw("using", Span::call_site())),
            7 | 8 => TokenTree::Literal(Literal::string(STRINGS[pick(STRINGS.len())])),
            9 => TokenTree::Literal(match pick(6) {
                0 => Literal::u8_suffixed((code >> 8) as u8),
                5 => Literal::u32_unsuffixed(code >> 28),
                1 => Literal::i64_unsuffixed(i64::from(code) - 1000),
                2 => Literal::character(char::from_u32(code >> 12).unwrap_or('x')),
                3 => Literal::byte_string(b"default"),
                _ => Literal::f64_unsuffixed(f64::from(code >> 8) / 7.0),
            }),
            _ => {
                let spacing = if code & (1 << 31) == 0 {
                    Spacing::Alone
                } else {
                    Spacing::Joint
                };
                TokenTree::Punct(Punct::new(PUNCTS[pick(PUNCTS.len())], spacing))
            }
        };
        if let Some((_, trees)) = open.last_mut() {
            trees.push(token);
        }
    }
    while open.len() > 1 {
        if let Some((delimiter, trees)) = open.pop() {
            let group = TokenTree::Group(Group::new(delimiter, trees.into_iter().collect()));
            if let Some((_, outer)) = open.last_mut() {
                outer.push(group);
            }
        }
    }
    open.pop()
        .map(|(_, trees)| trees.into_iter().collect())
        .unwrap_or_default()
}

const ARGUMENTS: &[&str] = &[
    "using = \"other\"",
    "using = \"default\"",
    "using = \"\"",
    "using = other",
    "savepoint = false",
    "savepoint = true",
    "savepoint = \"no\"",
    "durable = true",
    "durable = false",
    "durable",
    "conn = conn",
    "conn = db",
    "conn = \"db\"",
    "conn = self",
    "conn = self.conn",
    "conn = self.inner.0",
    "conn = self.conn()",
    "conn = self.",
    "conn = \"self.conn\"",
    "ambient = true",
    "ambient = false",
    "ambient = \"true\"",
    "ambient",
    "crate = \"diesel_atomic\"",
    "crate = \"crate::shim\"",
    "crate = \"a b\"",
    "usin = \"x\"",
    "using(\"x\")",
    "isolation = \"serializable\"",
    "isolation = \"read_uncommitted\"",
    "isolation = \"serialisable\"",
    "isolation = \"\"",
    "isolation = serializable",
    "isolation = Isolation::Serializable",
    "isolation = true",
    "isolation(serializable)",
    "read_only = true",
    "read_only = false",
    "read_only = \"true\"",
    "read_only = 1",
    "begin = \"immediate\"",
    "begin = \"deferred\"",
    "begin = \"immedate\"",
    "begin = exclusive",
    "begin",
    "retry = 3",
    "retry = 0",
    "retry = -1",
    "retry = 3u8",
    "retry = 4294967296",
    "retry = \"3\"",
    "retry = true",
    "retry = 2.5",
    "retry =",
    "readonly = true",
];

const VALID_ARGUMENTS: &[&str] = &[
    "using = \"other\"",
    "savepoint = false",
    "durable = true",
    "durable = true, retry = 3",
    "isolation = \"repeatable_read\"",
    "read_only = true",
    "begin = \"immediate\"",
    "conn = conn",
    "conn = self.conn",
    "conn = self",
    "ambient = true",
    "crate = \"diesel_atomic\"",
];

/// `key = value, ...` lists close to valid ones, to reach the checks after parsing.
fn plausible_arguments(choices: &'static [&'static str]) -> impl Strategy<Value = TokenStream> {
    prop::collection::vec(any::<u8>(), 0..4).prop_map(|codes| {
        let arguments: Vec<&str> = codes
            .iter()
            .map(|&code| choices[usize::from(code) % choices.len()])
            .collect();
        let mut text = arguments.join(", ");
        if codes.first().is_some_and(|code| code % 2 == 0) {
            text.push(',');
        }
        text.parse().unwrap_or_default()
    })
}

fn arguments() -> impl Strategy<Value = TokenStream> {
    prop_oneof![
        1 => token_soup(),
        1 => plausible_arguments(ARGUMENTS),
        2 => plausible_arguments(VALID_ARGUMENTS),
    ]
}

// Valid choices come more often, so that a good share of cases expand successfully.
const ATTRIBUTES: &[&str] = &[
    "",
    "",
    "",
    "",
    "",
    "",
    "#[doc = \"x\"]",
    "#[inline]",
    "#[atomic]",
    "#[atomic(using = \"other\")]",
    "#[diesel_atomic::atomic(savepoint = false)]",
    "#[atomic(durable = true, retry = 2, isolation = \"serializable\")]",
    "#[non_atomic_requests]",
    "#[non_atomic_requests(using = \"other\")]",
    "#[non_atomic_requests(usin)]",
    "#[atomic = \"x\"]",
];
const VISIBILITIES: &[&str] = &["", "pub ", "pub(crate) "];
const QUALIFIERS: &[&str] = &[
    "",
    "",
    "",
    "",
    "",
    "",
    "",
    "async ",
    "const ",
    "unsafe ",
    "const unsafe ",
    "async unsafe ",
    "extern \"C\" ",
];
const GENERICS: &[&str] = &["", "<T>", "<'a, C: Connection>", "<T, const N: usize>"];
const RECEIVERS: &[&str] = &[
    "",
    "",
    "",
    "self, ",
    "&self, ",
    "&mut self, ",
    "self: &mut Self, ",
    "&'a mut self, ",
    "mut self: Box<Self>, ",
];
const PARAMETERS: &[&str] = &[
    "",
    "",
    "",
    "",
    "conn: &mut C, ",
    "conn: &mut C, ",
    "conn: &C, ",
    "conn: C, ",
    "mut conn: &mut C, ",
    "db: &mut SqliteConnection, ",
    "connection: &mut impl Connection, ",
    "(a, b): (u8, u8), ",
    "(a, db): (u8, &mut DbConn), ",
    "db: &mut DbConn, ",
    "buffer: &mut Vec<u8>, ",
    "conn: &'a mut C, ",
    "x: impl Sized, ",
    "name: &'a str, ",
];
const OUTPUTS: &[&str] = &[
    "-> Result<(), E>",
    "-> QueryResult<T>",
    "-> Result<T, E>",
    "",
    "-> ()",
    "-> i32",
    "-> Result<(), E>",
    "-> QueryResult<T>",
    "-> impl Sized",
    "-> Result<impl Sized, E>",
    "-> Self",
    "-> &'a str",
    "-> !",
    "-> Option<u8>",
    "-> Count",
];
const WHERE_CLAUSES: &[&str] = &["", " where T: Clone", " where C: Connection"];
const BODIES: &[&str] = &[
    ";",
    "{ Ok(()) }",
    "{ Ok(()) }",
    "{}",
    "{ Ok(()) }",
    "{ return Ok(1); }",
    "{ #![allow(unused)] let x = 1; x }",
    "{ conn.execute()?; Ok(()) }",
    "{ async {}.await }",
    "{ fn inner() {} self.f() }",
    "{ self.conn.execute()?; assert!(self.ok(), \"{}\", self::NAME); Ok(()) }",
    "{ let f = || self.x; struct S; impl S { fn g(&self) {} } Ok(f()) }",
];
const OTHER_ITEMS: &[&str] = &[
    "struct S;",
    "struct S { a: u8 }",
    "enum E { A }",
    "union U { a: u8 }",
    "impl S { fn f(&self) {} }",
    "trait T { fn f(&self); }",
    "const X: u8 = 1;",
    "static S: u8 = 0;",
    "mod m {}",
    "type T = u8;",
    "use a::b;",
    "extern crate alloc;",
    "extern \"C\" {}",
    "macro_rules! m { () => {} }",
];

/// A small function built from parts users write, or another kind of item; each part is
/// picked by one number (cheap to generate, see `token_soup`).
fn item() -> impl Strategy<Value = String> {
    prop::array::uniform13(any::<u8>()).prop_map(|codes| {
        let pick = |choices: &[&'static str], code: u8| choices[usize::from(code) % choices.len()];
        if codes[0] % 8 == 0 {
            return pick(OTHER_ITEMS, codes[1]).to_owned();
        }
        format!(
            "{} {} {}{}fn f{}({}{}{}{}) {}{} {}",
            pick(ATTRIBUTES, codes[1]),
            pick(ATTRIBUTES, codes[2]),
            pick(VISIBILITIES, codes[3]),
            pick(QUALIFIERS, codes[4]),
            pick(GENERICS, codes[5]),
            pick(RECEIVERS, codes[6]),
            pick(PARAMETERS, codes[7]),
            pick(PARAMETERS, codes[8]),
            pick(PARAMETERS, codes[9]),
            pick(OUTPUTS, codes[10]),
            pick(WHERE_CLAUSES, codes[11]),
            pick(BODIES, codes[12]),
        )
    })
}

/// The output parses as Rust whenever the item did. (The item is parsed only when the
/// output does not: parsing is most of the cost of a case.)
fn assert_valid_output(item: &TokenStream, output: TokenStream) -> Result<(), TestCaseError> {
    if syn::parse2::<syn::File>(output.clone()).is_err() {
        prop_assert!(
            syn::parse2::<syn::File>(item.clone()).is_err(),
            "valid item, invalid output: {output}"
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: CASES,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn expansion_never_panics_and_stays_valid_rust(
        args in arguments(),
        item in item(),
        atomic in prop::bool::ANY,
    ) {
        let item: TokenStream = item.parse().unwrap_or_default();
        let output = if atomic {
            expand::atomic(args, item.clone())
        } else {
            expand::non_atomic_requests(args, item.clone())
        };
        assert_valid_output(&item, output)?;
    }

    #[test]
    fn any_item_tokens_never_panic(
        args in token_soup(),
        item in token_soup(),
        atomic in prop::bool::ANY,
    ) {
        if atomic {
            expand::atomic(args, item);
        } else {
            expand::non_atomic_requests(args, item);
        }
    }
}
