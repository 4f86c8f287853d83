//! Templates in hook and notify commands: handlebars over the run's
//! variables, in strict mode (an unknown variable is an error, not an empty
//! string) and without HTML escaping.

use handlebars::Handlebars;
use serde::Serialize;

/// The variables a template may use.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct Vars {
    pub job: String,
    pub run_id: String,
    /// The run's spool directory.
    pub spool: String,
    /// The committed snapshot's id (empty before the commit).
    pub snapshot: String,
    /// The event being notified (empty in hooks).
    pub event: String,
    /// The error that failed the run (empty otherwise).
    pub error: String,
    /// When the run started (RFC 3339).
    pub time: String,
    pub host: String,
}

/// The names templates may refer to, for messages.
pub const VARIABLES: &str = "job, run_id, spool, snapshot, event, error, time, host";

/// Render `template` with `vars`.
pub fn render(template: &str, vars: &Vars) -> Result<String, String> {
    if !template.contains("{{") {
        return Ok(template.to_string());
    }
    let mut hb = Handlebars::new();
    hb.set_strict_mode(true);
    hb.register_escape_fn(handlebars::no_escape);
    hb.render_template(template, vars).map_err(|e| {
        let reason = e.reason().to_string();
        format!("template {template:?}: {reason} (known variables: {VARIABLES})")
    })
}

/// Render the template of a command; `shell` when a shell reads it as a
/// script (a string command, or the script of `["sh", "-c", …]`). There
/// every value is made inert first: a file name in `{{error}}` could
/// otherwise run commands as holdfast's user (`'`, `;`, `$(…)` and newlines
/// are the shell's, not the value's). An argv's other strings get the
/// values exactly, as do `$HOLDFAST_*`.
pub fn render_command(template: &str, vars: &Vars, shell: bool) -> Result<String, String> {
    if !shell {
        return render(template, vars);
    }
    let inert = |v: &str| -> String {
        v.chars().map(|c| if c.is_alphanumeric() || " _-.,:/@%+".contains(c) { c } else { '_' }).collect()
    };
    let vars = Vars {
        job: inert(&vars.job),
        run_id: inert(&vars.run_id),
        spool: inert(&vars.spool),
        snapshot: inert(&vars.snapshot),
        event: inert(&vars.event),
        error: inert(&vars.error),
        time: inert(&vars.time),
        host: inert(&vars.host),
    };
    render(template, &vars)
}

/// The run's variables as commands find them in their environment
/// (`HOLDFAST_JOB`, …; the README lists them), exact whatever the command's
/// form; `HOLDFAST_EVENT` only for a notification (hooks have none).
pub fn environment(vars: &Vars) -> Vec<(String, String)> {
    [
        ("HOLDFAST_JOB", vars.job.as_str()),
        ("HOLDFAST_RUN_ID", &vars.run_id),
        ("HOLDFAST_SPOOL", &vars.spool),
        ("HOLDFAST_SNAPSHOT", &vars.snapshot),
        ("HOLDFAST_EVENT", &vars.event),
        ("HOLDFAST_ERROR", &vars.error),
        ("HOLDFAST_TIME", &vars.time),
        ("HOLDFAST_HOST", &vars.host),
    ]
    .into_iter()
    .filter(|(k, v)| *k != "HOLDFAST_EVENT" || !v.is_empty())
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_variables_render_and_unknown_ones_are_errors() {
        let vars = Vars { job: "shop".into(), event: "failure".into(), ..Default::default() };
        assert_eq!(render("{{job}}: {{event}} <&>", &vars).unwrap(), "shop: failure <&>");
        let err = render("{{jbo}}", &vars).unwrap_err();
        assert!(err.contains("jbo"), "{err}");
    }

    #[test]
    fn values_in_a_shell_string_cannot_become_shell_syntax() {
        let vars = Vars {
            job: "shop".into(),
            error: "changed while read: /srv/x';cd;touch pwned;'y\n$(reboot) `id` \"q\" >f &".into(),
            ..Default::default()
        };
        let line = render_command("echo 'holdfast {{job}}: {{error}}' {{{error}}} \"{{error}}\"", &vars, true).unwrap();
        assert_eq!(
            line,
            "echo 'holdfast shop: changed while read: /srv/x__cd_touch pwned__y___reboot_ _id_ _q_ _f _' \
             changed while read: /srv/x__cd_touch pwned__y___reboot_ _id_ _q_ _f _ \
             \"changed while read: /srv/x__cd_touch pwned__y___reboot_ _id_ _q_ _f _\""
        );
        assert_eq!(render_command("{{error}}", &vars, false).unwrap(), vars.error, "an argv gets the value exactly");
    }
}
