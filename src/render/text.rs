//! Escaping event-provided text for each target markup, and cutting it to a provider's
//! limit with a visible ellipsis. Limits count characters (Unicode scalar values), which is
//! how Slack and Discord count them; an escape sequence is never cut in half.

/// Marks text that was cut: a provider's limit is never a rejected request.
pub const ELLIPSIS: char = '…';

/// Slack mrkdwn: only `&`, `<` and `>` are control characters; escaping `<` also keeps event
/// text from forming `<!channel>` mentions or links.
pub fn slack(c: char) -> Option<&'static str> {
    match c {
        '&' => Some("&amp;"),
        '<' => Some("&lt;"),
        '>' => Some("&gt;"),
        _ => None,
    }
}

/// Discord markdown: a backslash makes each of these literal. Mentions are disabled in the
/// payload itself (`allowed_mentions`), so `@everyone` in a monitor name pings no one.
pub fn discord(c: char) -> Option<&'static str> {
    match c {
        '\\' => Some("\\\\"),
        '*' => Some("\\*"),
        '_' => Some("\\_"),
        '~' => Some("\\~"),
        '`' => Some("\\`"),
        '|' => Some("\\|"),
        '>' => Some("\\>"),
        '<' => Some("\\<"),
        '#' => Some("\\#"),
        '[' => Some("\\["),
        ']' => Some("\\]"),
        '(' => Some("\\("),
        ')' => Some("\\)"),
        _ => None,
    }
}

/// HTML text and attribute values.
pub fn html(c: char) -> Option<&'static str> {
    match c {
        '&' => Some("&amp;"),
        '<' => Some("&lt;"),
        '>' => Some("&gt;"),
        '"' => Some("&quot;"),
        '\'' => Some("&#39;"),
        _ => None,
    }
}

/// Text shown as it is (Slack `plain_text`, PagerDuty, plain-text email).
pub fn plain(_: char) -> Option<&'static str> {
    None
}

/// Escapes `text` with `escape` and keeps the result within `limit` characters, ending in
/// [`ELLIPSIS`] when something had to be cut.
pub fn fit(text: &str, limit: usize, escape: fn(char) -> Option<&'static str>) -> String {
    let mut out = String::with_capacity(text.len().min(limit.saturating_mul(2)));
    let mut used: usize = 0;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        let piece_len = escape(c).map_or(1, |e| e.chars().count());
        // Room for the ellipsis must remain unless this is the very last piece.
        let reserve = usize::from(chars.peek().is_some());
        if used.saturating_add(piece_len + reserve) > limit {
            if used < limit {
                out.push(ELLIPSIS);
            }
            return out;
        }
        match escape(c) {
            Some(e) => out.push_str(e),
            None => out.push(c),
        }
        used += piece_len;
    }
    out
}

/// Escapes without a limit.
pub fn escape(text: &str, escape: fn(char) -> Option<&'static str>) -> String {
    fit(text, usize::MAX, escape)
}

/// Cuts plain text to `limit` characters.
pub fn cut(text: &str, limit: usize) -> String {
    fit(text, limit, plain)
}

/// One line: control characters (newlines included) become spaces, so event text cannot
/// start a new header line, list item or quote.
pub fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fits_within_limits_with_a_visible_ellipsis() {
        assert_eq!(cut("abcdef", 6), "abcdef");
        assert_eq!(cut("abcdefg", 6), "abcde…");
        assert_eq!(cut("", 3), "");
        assert_eq!(cut("ab", 1), "…");
        assert_eq!(cut("ééééé", 3), "éé…");
        // An escape sequence is kept whole or left out, never cut in half.
        assert_eq!(fit("a<b", 5, slack), "a…");
        assert_eq!(fit("a<b", 6, slack), "a&lt;b");
        assert_eq!(fit("<<<<", 10, slack), "&lt;&lt;…");
        for limit in 1..40 {
            let out = fit("<script>alert('x') & more</script>", limit, html);
            assert!(out.chars().count() <= limit, "{limit}: {out}");
        }
    }

    #[test]
    fn escapes_each_markup() {
        assert_eq!(
            escape("<!channel> & co", slack),
            "&lt;!channel&gt; &amp; co"
        );
        assert_eq!(
            escape("*bold* _it_ [x](y)", discord),
            "\\*bold\\* \\_it\\_ \\[x\\]\\(y\\)"
        );
        assert_eq!(
            escape("<script>\"'&", html),
            "&lt;script&gt;&quot;&#39;&amp;"
        );
        assert_eq!(one_line("a\nb\r\tc"), "a b  c");
    }
}
