//! An agent's `meta-data`: its parameters and its advised action timeouts.

use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// One parameter an agent takes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Parameter {
    pub name: String,
    pub required: bool,
    pub unique: bool,
    pub content_type: String,
    pub default: Option<String>,
    pub shortdesc: String,
}

/// One action an agent advertises, with its advised timeout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Action {
    pub name: String,
    #[serde(serialize_with = "ser_dur")]
    pub timeout: Option<Duration>,
    pub depth: Option<u32>,
}

fn ser_dur<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
        None => s.serialize_none(),
    }
}

/// What `meta-data` says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MetaData {
    pub name: String,
    pub shortdesc: String,
    pub longdesc: String,
    pub parameters: Vec<Parameter>,
    pub actions: BTreeMap<String, Action>,
}

impl MetaData {
    /// The advised timeout of `action`, if the agent gives one.
    pub fn timeout(&self, action: &str) -> Option<Duration> {
        self.actions.get(action).and_then(|a| a.timeout)
    }

    pub fn parameter(&self, name: &str) -> Option<&Parameter> {
        self.parameters.iter().find(|p| p.name == name)
    }
}

/// Parses an OCF timeout: `"20s"`, `"20"` (seconds), `"2m"`, `"30min"`, `"500ms"`.
pub fn parse_timeout(text: &str) -> Option<Duration> {
    let t = text.trim();
    if let Ok(secs) = t.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    humantime::parse_duration(t).ok()
}

fn text_of(node: roxmltree::Node, tag: &str) -> String {
    node.children()
        .find(|c| c.has_tag_name(tag))
        .and_then(|c| c.text())
        .map(|t| t.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Why an agent's `meta-data` could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MetaDataError {
    #[error("meta-data is not valid XML: {0}")]
    Xml(#[from] roxmltree::Error),
    #[error("meta-data has <{0}> at its root, not <resource-agent>")]
    Root(String),
}

/// Parses the XML an agent prints for `meta-data`.
pub fn parse(xml: &str) -> Result<MetaData, MetaDataError> {
    let doc = roxmltree::Document::parse_with_options(
        xml,
        roxmltree::ParsingOptions {
            allow_dtd: true,
            ..Default::default()
        },
    )?;
    let root = doc.root_element();
    if !root.has_tag_name("resource-agent") {
        return Err(MetaDataError::Root(root.tag_name().name().to_owned()));
    }
    let mut parameters = Vec::new();
    if let Some(ps) = root.children().find(|c| c.has_tag_name("parameters")) {
        for p in ps.children().filter(|c| c.has_tag_name("parameter")) {
            let Some(name) = p.attribute("name") else {
                continue;
            };
            let content = p.children().find(|c| c.has_tag_name("content"));
            parameters.push(Parameter {
                name: name.to_string(),
                required: p.attribute("required") == Some("1"),
                unique: p.attribute("unique") == Some("1"),
                content_type: content
                    .and_then(|c| c.attribute("type"))
                    .unwrap_or("string")
                    .to_string(),
                default: content
                    .and_then(|c| c.attribute("default"))
                    .map(str::to_string),
                shortdesc: text_of(p, "shortdesc"),
            });
        }
    }
    let mut actions = BTreeMap::new();
    if let Some(acts) = root.children().find(|c| c.has_tag_name("actions")) {
        for a in acts.children().filter(|c| c.has_tag_name("action")) {
            let Some(name) = a.attribute("name") else {
                continue;
            };
            let depth = a.attribute("depth").and_then(|d| d.parse().ok());
            // Several monitor entries (one per depth) keep the first timeout.
            actions.entry(name.to_string()).or_insert(Action {
                name: name.to_string(),
                timeout: a.attribute("timeout").and_then(parse_timeout),
                depth,
            });
        }
    }
    Ok(MetaData {
        name: root.attribute("name").unwrap_or_default().to_string(),
        shortdesc: text_of(root, "shortdesc"),
        longdesc: text_of(root, "longdesc"),
        parameters,
        actions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const XML: &str = r#"<?xml version="1.0"?>
<!DOCTYPE resource-agent SYSTEM "ra-api-1.dtd">
<resource-agent name="Dummy" version="1.0">
<version>1.0</version>
<longdesc lang="en">Keeps track
 of whether it runs.</longdesc>
<shortdesc lang="en">Example stateless resource agent</shortdesc>
<parameters>
<parameter name="state" unique="1" required="1">
<shortdesc lang="en">State file</shortdesc>
<content type="string" default="/run/x.state" />
</parameter>
<parameter name="fake"><content type="integer" /></parameter>
</parameters>
<actions>
<action name="start" timeout="20s" />
<action name="monitor" timeout="30" interval="10s" depth="0" />
<action name="monitor" timeout="60" depth="10" />
<action name="meta-data" timeout="5s" />
</actions>
</resource-agent>"#;

    #[test]
    fn meta_data_is_parsed() {
        let m = parse(XML).unwrap();
        assert_eq!(m.name, "Dummy");
        assert_eq!(m.shortdesc, "Example stateless resource agent");
        assert_eq!(m.longdesc, "Keeps track of whether it runs.");
        let state = m.parameter("state").unwrap();
        assert!(state.required && state.unique);
        assert_eq!(state.default.as_deref(), Some("/run/x.state"));
        assert_eq!(m.parameter("fake").unwrap().content_type, "integer");
        assert_eq!(m.timeout("start"), Some(Duration::from_secs(20)));
        assert_eq!(m.timeout("monitor"), Some(Duration::from_secs(30)));
        assert_eq!(m.timeout("stop"), None);
    }

    #[test]
    fn bad_meta_data_is_reported() {
        assert!(matches!(parse("not xml"), Err(MetaDataError::Xml(_))));
        assert!(parse("not xml")
            .unwrap_err()
            .to_string()
            .contains("not valid XML"));
        assert_eq!(parse("<x/>").unwrap_err(), MetaDataError::Root("x".into()));
        assert!(parse("<x/>").unwrap_err().to_string().contains("<x>"));
    }

    #[test]
    fn timeouts_parse() {
        assert_eq!(parse_timeout("20"), Some(Duration::from_secs(20)));
        assert_eq!(parse_timeout("20s"), Some(Duration::from_secs(20)));
        assert_eq!(parse_timeout("2min"), Some(Duration::from_secs(120)));
        assert_eq!(parse_timeout("soon"), None);
    }
}
