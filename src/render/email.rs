//! Email content: a subject like `[DOWN] Production API (us-east-1)`, an HTML part with the
//! full alert details and a one-click dashboard link, and the same as plain text. Also the
//! verification email sent to a newly added recipient.

use std::fmt::Write;

use super::digest::Digest;
use super::text::{cut, escape, html as h, one_line};
use super::Alert;
use crate::model::Severity;

/// Subjects beyond this are cut: mail clients show far less, and long ones fold badly.
const SUBJECT: usize = 200;
/// Alerts one summary email covers at most (CONTRACT §5a).
pub const DIGEST: usize = 500;

/// What an email says; the MIME structure is the sender's business.
#[derive(Debug, Clone, PartialEq)]
pub struct Email {
    pub subject: String,
    pub text: String,
    pub html: String,
}

fn accent(alert: &Alert<'_>) -> &'static str {
    match alert.severity {
        _ if alert.recovery => "#2e7d32",
        Severity::Critical => "#c62828",
        Severity::Warning => "#ef6c00",
        Severity::Info => "#1565c0",
    }
}

pub fn subject(alert: &Alert<'_>) -> String {
    let detail = alert
        .detail
        .as_ref()
        .map(|d| format!(" ({d})"))
        .unwrap_or_default();
    cut(
        &one_line(&format!("[{}] {}{detail}", alert.tag, alert.name)),
        SUBJECT,
    )
}

pub fn alert(alert: &Alert<'_>) -> Email {
    let mut text = format!("{}\n\n{}\n\n", alert.title, alert.summary);
    let width = alert
        .facts
        .iter()
        .map(|f| f.label.chars().count())
        .max()
        .unwrap_or(0)
        + 2;
    for fact in &alert.facts {
        let label = format!("{}:", fact.label);
        let _ = writeln!(text, "{label:<width$}{}", fact.value);
    }
    let _ = write!(
        text,
        "\nView in Sysmos: {}\n\n-- \nSent by Sysmos because this address receives alerts for account {}.\n",
        alert.link,
        alert.event.account_id()
    );

    let mut rows = String::new();
    for fact in &alert.facts {
        let _ = writeln!(
            rows,
            "<tr><td style=\"padding:6px 12px 6px 0;color:#555;white-space:nowrap;vertical-align:top\">{}</td>\
             <td style=\"padding:6px 0;color:#111\">{}</td></tr>",
            escape(&fact.label, h),
            escape(&fact.value, h)
        );
    }
    let color = accent(alert);
    let link = escape(&alert.link, h);
    let title = escape(&alert.title, h);
    let content = format!(
        r#"<p style="margin:0 0 4px;font-size:12px;font-weight:bold;letter-spacing:1px;color:{color}">{tag} · {severity}</p>
<h1 style="margin:0 0 12px;font-size:20px;color:#111">{title}</h1>
<p style="margin:0 0 20px;font-size:15px;color:#333">{summary}</p>
<table role="presentation" cellpadding="0" cellspacing="0" style="font-size:14px;margin:0 0 24px">
{rows}</table>
<a href="{link}" style="display:inline-block;padding:10px 18px;background:{color};color:#fff;text-decoration:none;border-radius:4px;font-weight:bold">View in Sysmos</a>
"#,
        tag = escape(&alert.tag, h),
        severity = alert.severity_label(),
        summary = escape(&alert.summary, h),
    );
    let account = escape(alert.event.account_id(), h);
    let footer =
        format!("Sent by Sysmos because this address receives alerts for account {account}.");
    let html = page(&title, (600, Some(color)), &content, &footer);
    Email {
        subject: subject(alert),
        text,
        html,
    }
}

/// The "summary of affected resources": one email for the alerts of `digest` (at most
/// [`DIGEST`]), a table row per alert (resource, status, severity, time, dashboard link),
/// oldest first; HTML and the same as plain text.
pub fn summary(digest: &Digest<'_>) -> Email {
    let lines = &digest.lines[..digest.lines.len().min(DIGEST)];
    let account = lines.first().map_or("", |l| l.alert.event.account_id());
    let headline = digest.headline();
    let mut text = format!("Summary of affected resources\n{headline}\n\n");
    let mut rows = String::new();
    for line in lines {
        let alert = &line.alert;
        let _ = write!(
            text,
            "- {} ({}): {}, {}, {}\n  {}\n",
            alert.name,
            alert.product,
            line.status(),
            alert.severity_label(),
            line.when(),
            alert.link
        );
        let color = if line.over() {
            "#2e7d32"
        } else {
            accent(alert)
        };
        let _ = writeln!(
            rows,
            "<tr><td style=\"{CELL}\"><a href=\"{link}\" style=\"color:#1565c0\">{name}</a><br><span style=\"color:#888;font-size:12px\">{product}</span></td>\
             <td style=\"{CELL};color:{color};font-weight:bold\">{status}</td><td style=\"{CELL}\">{severity}</td>\
             <td style=\"{CELL};white-space:nowrap\">{when}</td><td style=\"{CELL}\"><a href=\"{link}\" style=\"color:#1565c0\">Open</a></td></tr>",
            link = escape(&alert.link, h),
            name = escape(&alert.name, h),
            product = escape(&alert.product, h),
            status = escape(&line.status(), h),
            severity = alert.severity_label(),
            when = escape(&line.when(), h),
        );
    }
    let _ = write!(
        text,
        "\n-- \nSent by Sysmos because this address receives alerts for account {account}. \
         These alerts arrived together while this address was at its email rate limit.\n"
    );
    let content = format!(
        r#"<h1 style="margin:0 0 4px;font-size:20px;color:#111">Summary of affected resources</h1>
<p style="margin:0 0 20px;font-size:15px;color:#333">{headline}</p>
<table cellpadding="0" cellspacing="0" style="width:100%;font-size:14px;border-collapse:collapse">
<tr style="text-align:left;color:#555"><th style="{CELL}">Resource</th><th style="{CELL}">Status</th><th style="{CELL}">Severity</th><th style="{CELL}">Time</th><th style="{CELL}">Dashboard</th></tr>
{rows}</table>
"#,
        headline = escape(&headline, h),
    );
    let footer = format!(
        "Sent by Sysmos because this address receives alerts for account {}. These alerts \
         arrived together while this address was at its email rate limit.",
        escape(account, h)
    );
    let html = page(
        "Summary of affected resources",
        (760, Some("#c62828")),
        &content,
        &footer,
    );
    Email {
        subject: cut(&one_line(&format!("[Sysmos] {headline}")), SUBJECT),
        text,
        html,
    }
}

/// Every email's HTML: a card `width` px wide (with a top border of the accent colour, if
/// any) holding `content`, and `footer` (HTML, may be empty) below it. `title` is HTML.
fn page(title: &str, (width, accent): (u32, Option<&str>), content: &str, footer: &str) -> String {
    let border = accent.map_or_else(String::new, |c| format!(";border-top:6px solid {c}"));
    let footer = if footer.is_empty() {
        String::new()
    } else {
        format!(
            "<p style=\"max-width:{width}px;margin:16px auto 0;font-size:12px;color:#888\">{footer}</p>\n"
        )
    };
    format!(
        r#"<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{title}</title></head>
<body style="margin:0;padding:24px;background:#f4f5f7;font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif">
<table role="presentation" width="100%" cellpadding="0" cellspacing="0" style="max-width:{width}px;margin:0 auto;background:#fff;border-radius:6px{border}">
<tr><td style="padding:24px">
{content}</td></tr></table>
{footer}</body></html>
"#
    )
}

/// A summary table cell.
const CELL: &str = "padding:6px 10px;border-bottom:1px solid #eee;vertical-align:top";

/// The one email a new recipient gets before any alert: a link to confirm the address.
pub fn verification(address: &str, url: &str) -> Email {
    let text = format!(
        "Confirm your email address for Sysmos alerts\n\n\
         {address} was added as a recipient of Sysmos alert notifications.\n\
         Open this link to confirm it and start receiving alerts:\n\n{url}\n\n\
         If you did not expect this, ignore this email: no alerts are sent to an unconfirmed address.\n"
    );
    let content = format!(
        r#"<h1 style="margin:0 0 12px;font-size:20px;color:#111">Confirm your email address</h1>
<p style="margin:0 0 20px;font-size:15px;color:#333"><b>{address}</b> was added as a recipient of Sysmos alert notifications. Confirm it to start receiving alerts.</p>
<a href="{url}" style="display:inline-block;padding:10px 18px;background:#1565c0;color:#fff;text-decoration:none;border-radius:4px;font-weight:bold">Confirm email address</a>
<p style="margin:20px 0 0;font-size:12px;color:#888">If you did not expect this, ignore this email: no alerts are sent to an unconfirmed address.</p>
"#,
        address = escape(address, h),
        url = escape(url, h),
    );
    let html = page("Confirm your email address", (600, None), &content, "");
    Email {
        subject: "Confirm your email address for Sysmos alerts".into(),
        text,
        html,
    }
}
