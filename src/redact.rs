//! What may be shown of a URL. Database and subscription URLs can carry a
//! password (in the userinfo) or a token (in the query); logs, error messages
//! and start-up lines show them only through [`url`].

/// Query parameters whose values are treated as secrets (compared without case).
const SECRET_PARAMS: &[&str] = &[
    "password",
    "pass",
    "pwd",
    "token",
    "access_token",
    "api_key",
    "apikey",
    "key",
    "secret",
    "sig",
    "signature",
    "auth",
];

/// Shown instead of a secret.
const MASK: &str = "***";

/// `raw` with its password and secret-looking query values replaced by `***`.
///
/// Parsed with the `url` crate, so a password containing `@` or `:` is found
/// whole. A URL with nothing secret is returned unchanged; one that does not
/// parse is redacted whole, since where its secret would be is unknown.
pub fn url(raw: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(raw) else {
        return MASK.to_owned();
    };
    let mut changed = false;
    if parsed.password().is_some() {
        // Fails only for URLs that cannot have a password (no host): none here.
        changed |= parsed.set_password(Some(MASK)).is_ok();
    }
    if parsed.query_pairs().any(|(k, _)| is_secret_param(&k)) {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(k, v)| {
                let v = if is_secret_param(&k) {
                    MASK.to_owned()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
        changed = true;
    }
    if changed {
        parsed.to_string()
    } else {
        raw.to_owned()
    }
}

fn is_secret_param(name: &str) -> bool {
    SECRET_PARAMS.iter().any(|p| p.eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use super::url;

    #[test]
    fn a_password_containing_at_is_hidden_whole() {
        let shown = url("postgres://app:p@ss@w0rd@db.example.com:5432/enrollhook");
        assert_eq!(shown, "postgres://app:***@db.example.com:5432/enrollhook");
        assert!(
            !shown.contains("ss@w0rd") && !shown.contains("w0rd"),
            "{shown}"
        );
    }

    #[test]
    fn a_password_in_the_query_is_hidden() {
        let shown = url("postgres://app@db/enrollhook?password=hunter2&sslmode=require");
        assert_eq!(
            shown,
            "postgres://app@db/enrollhook?password=***&sslmode=require"
        );
    }

    #[test]
    fn tokens_in_the_query_are_hidden_whatever_their_case() {
        let shown = url("https://hooks.example.com/in?Token=abc123&api_key=k1&sig=s1&keep=yes");
        assert!(!shown.contains("abc123") && !shown.contains("k1") && !shown.contains("s1"));
        assert!(shown.contains("keep=yes"), "{shown}");
    }

    #[test]
    fn urls_without_secrets_are_unchanged() {
        for u in [
            "sqlite://enrollhook.db",
            "sqlite:///var/lib/enrollhook/enrollhook.db?mode=rwc",
            "sqlite::memory:",
            "postgres://app@db/enrollhook",
            "https://example.com/hook?course=1",
        ] {
            assert_eq!(url(u), u);
        }
    }

    #[test]
    fn an_unparseable_url_is_hidden_whole() {
        assert_eq!(url("host=db password=hunter2"), "***");
    }
}
