//! TOML configuration files, read the same way by the node and the
//! gateway: unknown keys are errors, and every error names the file and the
//! field.

use std::path::Path;

use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    /// A syntax error, a wrong type or an unknown key (the message names it).
    #[error("{file}: {message}")]
    Parse { file: String, message: String },
    /// A value of the right type that is out of range.
    #[error("{file}: `{field}`: {message}")]
    Invalid {
        file: String,
        field: String,
        message: String,
    },
}

impl ConfigError {
    pub fn invalid(file: &str, field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            file: file.to_owned(),
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A configuration that has range checks beyond its types.
pub trait Checked {
    /// `file` names the source in errors.
    fn check(&self, file: &str) -> Result<(), ConfigError>;
}

/// Parse TOML text (`file` names it in errors) and check it.
pub fn from_toml<T: DeserializeOwned + Checked>(text: &str, file: &str) -> Result<T, ConfigError> {
    let syntax = |e: toml::de::Error| ConfigError::Parse {
        file: file.to_owned(),
        message: e.message().trim_end().to_owned() + &span_note(text, e.span()),
    };
    let de = toml::Deserializer::parse(text).map_err(syntax)?;
    // The path of the field that failed (`models[1].options.kv_type`).
    let c: T = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        ConfigError::Parse {
            file: file.to_owned(),
            message: format!(
                "{}{}{}",
                if path == "." {
                    String::new()
                } else {
                    format!("`{path}`: ")
                },
                inner.message().trim_end(),
                span_note(text, inner.span())
            ),
        }
    })?;
    c.check(file)?;
    Ok(c)
}

/// Read, parse and check a TOML file.
pub fn load<T: DeserializeOwned + Checked>(path: &Path) -> Result<T, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        file: file.clone(),
        source,
    })?;
    from_toml(&text, &file)
}

/// " (line N)" for an error's position.
fn span_note(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    match span {
        Some(r) if r.start <= text.len() => {
            let line = text[..r.start].matches('\n').count() + 1;
            format!(" (line {line})")
        }
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct C {
        port: u16,
        #[serde(default)]
        inner: Inner,
    }
    #[derive(serde::Deserialize, Debug, Default)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        #[serde(default)]
        n: u32,
    }
    impl Checked for C {
        fn check(&self, file: &str) -> Result<(), ConfigError> {
            if self.port == 0 {
                return Err(ConfigError::invalid(file, "port", "must not be 0"));
            }
            Ok(())
        }
    }

    #[test]
    fn errors_name_the_file_and_the_field() {
        let e = from_toml::<C>("port = 1\nprot = 2\n", "a.toml").unwrap_err();
        let m = e.to_string();
        assert!(
            m.starts_with("a.toml: ") && m.contains("prot") && m.contains("line 2"),
            "{m}"
        );
        let e = from_toml::<C>("port = 1\n[inner]\nn = \"x\"\n", "a.toml").unwrap_err();
        assert!(
            e.to_string().contains("`inner.n`") && e.to_string().contains("line 3"),
            "{e}"
        );
        let e = from_toml::<C>("port = 0\n", "a.toml").unwrap_err();
        assert_eq!(e.to_string(), "a.toml: `port`: must not be 0");
        let e = load::<C>(Path::new("/nonexistent/realizar.toml")).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }), "{e}");
        let c = from_toml::<C>("port = 7\n[inner]\nn = 3\n", "a.toml").unwrap();
        assert_eq!((c.port, c.inner.n), (7, 3));
    }
}
