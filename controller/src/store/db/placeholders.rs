//! SQL written once with SQLite's numbered placeholders (`?1`, `?2`, ...), turned into
//! PostgreSQL's (`$1`, `$2`, ...).
//!
//! A small scanner, not a parser: it copies the text and rewrites `?N` outside string
//! literals (`'...'`, with `''` inside), quoted identifiers (`"..."`) and comments (`-- ...`,
//! `/* ... */`). A bare `?` (SQLite's positional form) is refused: with several statements
//! sharing parameters, only numbered placeholders mean the same on both backends.

use super::DbError;

/// Rewrites `?N` placeholders of `sql` as `$N`.
///
/// # Errors
/// [`DbError::Placeholder`] for a bare `?` or an unterminated literal, identifier or comment.
pub fn to_postgres(sql: &str) -> Result<String, DbError> {
    let bytes = sql.as_bytes();
    let mut out = String::with_capacity(sql.len());
    // Start of the text not yet copied to `out`.
    let mut copied = 0;
    let mut i = 0;
    let fail = |what: &str, at: usize| {
        Err(DbError::Placeholder(format!(
            "{what} at byte {at} of: {}",
            sql.chars().take(200).collect::<String>()
        )))
    };
    while i < bytes.len() {
        match bytes[i] {
            quote @ (b'\'' | b'"') => {
                // Skip to the closing quote; a doubled quote is an escaped one.
                let start = i;
                i += 1;
                loop {
                    match bytes.get(i) {
                        None => return fail("unterminated quote", start),
                        Some(&b) if b == quote => {
                            if bytes.get(i + 1) == Some(&quote) {
                                i += 2;
                            } else {
                                i += 1;
                                break;
                            }
                        }
                        Some(_) => i += 1,
                    }
                }
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                let start = i;
                match sql[i + 2..].find("*/") {
                    Some(end) => i += 2 + end + 2,
                    None => return fail("unterminated comment", start),
                }
            }
            b'?' => {
                let digits = bytes[i + 1..]
                    .iter()
                    .take_while(|b| b.is_ascii_digit())
                    .count();
                if digits == 0 {
                    return fail("bare ? placeholder (write ?1, ?2, ...)", i);
                }
                out.push_str(&sql[copied..i]);
                out.push('$');
                out.push_str(&sql[i + 1..i + 1 + digits]);
                i += 1 + digits;
                copied = i;
            }
            _ => i += 1,
        }
    }
    out.push_str(&sql[copied..]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_placeholders_become_dollar_ones_outside_literals_and_comments() {
        let sql = "SELECT a FROM t -- what ?9 means\n\
                   WHERE b = ?1 AND c = 'it''s ?2' AND \"odd?3\" = ?12 /* ?4 */ AND d = ?2";
        assert_eq!(
            to_postgres(sql).unwrap(),
            "SELECT a FROM t -- what ?9 means\n\
             WHERE b = $1 AND c = 'it''s ?2' AND \"odd?3\" = $12 /* ?4 */ AND d = $2"
        );
        // Non-ASCII text around placeholders is kept intact.
        assert_eq!(
            to_postgres("SELECT 'é', ?1, 'ü'").unwrap(),
            "SELECT 'é', $1, 'ü'"
        );
    }

    #[test]
    fn bare_placeholders_and_unterminated_text_are_refused() {
        for bad in [
            "SELECT ? FROM t",
            "SELECT 'open",
            "SELECT \"open",
            "SELECT 1 /* open",
        ] {
            let err = to_postgres(bad).unwrap_err();
            assert!(matches!(err, DbError::Placeholder(_)), "{bad}: {err}");
        }
    }
}
