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

/// A configuration from an optional TOML file with environment variables
/// over it: `PREFIX` + a key in capitals sets that key (`REALIZAR_GATEWAY_
/// EPSILON=0.3`), `__` separates a table's key (`REALIZAR_NODE_MODEL_
/// DEFAULTS__KV_TYPE=f32`), and the value is read as TOML (a number, a
/// bool, an array, an inline table) or else taken as a string. For
/// containers, which are configured by their environment. A variable that
/// names no key is an error naming the variable.
pub fn load_with_env<T: DeserializeOwned + Checked>(
    path: Option<&Path>,
    prefix: &str,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<T, ConfigError> {
    let (text, file) = match path {
        Some(p) => {
            let file = p.display().to_string();
            let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                file: file.clone(),
                source,
            })?;
            (text, file)
        }
        None => (String::new(), "the defaults".to_owned()),
    };
    let set: Vec<(String, Vec<String>, toml::Value)> = vars
        .into_iter()
        .filter_map(|(k, v)| {
            let rest = k.strip_prefix(prefix)?.to_ascii_lowercase();
            let path: Vec<String> = rest.split("__").map(str::to_owned).collect();
            let value = toml::from_str::<toml::Table>(&format!("v = {v}"))
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or(toml::Value::String(v));
            Some((k, path, value))
        })
        .collect();
    if set.is_empty() {
        return from_toml(&text, &file);
    }
    let mut table: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::Parse {
        file: file.clone(),
        message: e.message().trim_end().to_owned() + &span_note(&text, e.span()),
    })?;
    for (var, path, value) in &set {
        let Some((last, tables)) = path.split_last() else {
            continue; // `split` yields at least one piece
        };
        let mut t = &mut table;
        for k in tables {
            let entry = t
                .entry(k.clone())
                .or_insert_with(|| toml::Value::Table(Default::default()));
            t = entry.as_table_mut().ok_or_else(|| ConfigError::Parse {
                file: var.clone(),
                message: format!("`{k}` is not a table"),
            })?;
        }
        t.insert(last.clone(), value.clone());
    }
    let merged = toml::to_string(&table).map_err(|e| ConfigError::Parse {
        file: file.clone(),
        message: e.to_string(),
    })?;
    let names: Vec<&str> = set.iter().map(|(v, _, _)| v.as_str()).collect();
    let source = format!("{file} with {} from the environment", names.join(", "));
    from_toml(&merged, &source).map_err(|e| match e {
        // An unknown key set by a variable: name the variable.
        ConfigError::Parse { file, message } => {
            let culprit = set.iter().find(|(_, path, _)| {
                message.contains("unknown field")
                    && message.contains(&format!("`{}`", path[path.len() - 1]))
            });
            match culprit {
                Some((var, _, _)) => ConfigError::Parse {
                    file: var.clone(),
                    message: format!("names no configuration key: {message}"),
                },
                None => ConfigError::Parse { file, message },
            }
        }
        other => other,
    })
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

    fn env(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn environment_variables_set_keys_over_the_file_and_unknown_ones_are_named() {
        let dir = std::env::temp_dir().join(format!("realizar-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c.toml");
        std::fs::write(&f, "port = 1\n[inner]\nn = 2\n").unwrap();
        // No variables: the file as it is.
        let c: C = load_with_env(Some(&f), "X_", env(&[("OTHER", "1")])).unwrap();
        assert_eq!((c.port, c.inner.n), (1, 2));
        // Over the file, nested with `__`; a value read as TOML.
        let c: C = load_with_env(
            Some(&f),
            "X_",
            env(&[("X_PORT", "8081"), ("X_INNER__N", "7")]),
        )
        .unwrap();
        assert_eq!((c.port, c.inner.n), (8081, 7));
        // Without a file.
        let c: C = load_with_env(None, "X_", env(&[("X_PORT", "9")])).unwrap();
        assert_eq!(c.port, 9);
        // A variable naming no key: an error naming the variable.
        let e = load_with_env::<C>(Some(&f), "X_", env(&[("X_PORTT", "9")]))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("X_PORTT: names no configuration key"), "{e}");
        // A wrong type: the field and where the value came from.
        let e = load_with_env::<C>(Some(&f), "X_", env(&[("X_PORT", "many")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("X_PORT from the environment") && e.contains("port"),
            "{e}"
        );
        // Range checks still apply.
        let e = load_with_env::<C>(None, "X_", env(&[("X_PORT", "0")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("must not be 0"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
