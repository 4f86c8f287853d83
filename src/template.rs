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
}
