//! Scopes around blocks: a request (Django's `ATOMIC_REQUESTS`, rules Q1–Q3) and a test
//! transaction (Django's `TestCase`, rules T1–T2). They use the engine; the engine never
//! calls them.

#[cfg(feature = "async")]
pub(crate) mod aio_request;
pub(crate) mod request;
pub mod testing;
