//! "Did you mean ...?" for misspelt names.

/// The candidate nearest to `wrong`, if it is near enough to be a likely typo.
///
/// Near enough: at most a third of the longer name's letters differ (at least one may, but not
/// all of the shorter name's), so `usin` finds `using` and `durabel` finds `durable`, but
/// `timeout` finds nothing and `db` does not find `b`; or one
/// name is a prefix of the other (`connection` finds `conn`), as people abbreviate both ways.
pub(crate) fn nearest<'a>(wrong: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let wrong = wrong.trim_start_matches("r#").to_lowercase();
    candidates
        .iter()
        .filter_map(|&candidate| {
            let distance = strsim::damerau_levenshtein(&wrong, candidate);
            let (wrong_len, candidate_len) = (wrong.chars().count(), candidate.chars().count());
            let close = distance <= (wrong_len.max(candidate_len) / 3).max(1)
                && distance < wrong_len.min(candidate_len);
            let abbreviated = (wrong.len() >= 3 && candidate.starts_with(&wrong))
                || (candidate.len() >= 4 && wrong.starts_with(candidate));
            (close || abbreviated).then_some((distance, candidate))
        })
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn atomic_keys() -> Vec<&'static str> {
        crate::args::Attribute::Atomic.key_names()
    }

    const ISOLATION_LEVELS: &[&str] = &[
        "serializable",
        "repeatable_read",
        "read_committed",
        "read_uncommitted",
    ];

    #[test]
    fn typos_find_the_intended_key() {
        let keys = atomic_keys();
        assert_eq!(nearest("usin", &keys), Some("using"));
        assert_eq!(nearest("save_point", &keys), Some("savepoint"));
        assert_eq!(nearest("durabel", &keys), Some("durable"));
        assert_eq!(nearest("Using", &keys), Some("using"));
        assert_eq!(nearest("con", &keys), Some("conn"));
        assert_eq!(nearest("connection", &keys), Some("conn"));
        assert_eq!(nearest("dur", &keys), Some("durable"));
        assert_eq!(nearest("readonly", &keys), Some("read_only"));
        assert_eq!(nearest("isolation_level", &keys), Some("isolation"));
    }

    #[test]
    fn misspelt_values_find_the_intended_name() {
        assert_eq!(
            nearest("serialisable", ISOLATION_LEVELS),
            Some("serializable")
        );
        assert_eq!(
            nearest("repeatable read", ISOLATION_LEVELS),
            Some("repeatable_read")
        );
        assert_eq!(
            nearest("READ COMMITTED", ISOLATION_LEVELS),
            Some("read_committed")
        );
        assert_eq!(nearest("snapshot", ISOLATION_LEVELS), None);
    }

    #[test]
    fn unrelated_names_find_nothing() {
        let keys = atomic_keys();
        assert_eq!(nearest("timeout", &keys), None);
        assert_eq!(nearest("x", &keys), None);
        assert_eq!(nearest("", &keys), None);
        assert_eq!(nearest("db", &["b"]), None);
    }
}
