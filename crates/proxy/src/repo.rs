//! `repositories.allow`: glob patterns of the public repositories. Which repositories a request
//! names is the gate's to say (`registry_edge_gate::Operation::repositories`, token scopes): this
//! module only matches names against the patterns.

use regex::Regex;

use registry_edge_gate::grammar::is_name as is_valid_name;

/// Glob patterns of public repositories, compiled once: `*` matches any run of characters,
/// `/` included.
#[derive(Debug)]
pub struct Allow {
    everything: bool,
    re: Option<Regex>,
}

impl Allow {
    pub fn new(globs: &[String]) -> Allow {
        if globs.iter().any(|g| g == "*") {
            return Allow {
                everything: true,
                re: None,
            };
        }
        let alternatives: Vec<String> = globs
            .iter()
            .map(|g| {
                g.split('*')
                    .map(regex::escape)
                    .collect::<Vec<_>>()
                    .join(".*")
            })
            .collect();
        let re = if alternatives.is_empty() {
            None
        } else {
            Regex::new(&format!("^(?:{})$", alternatives.join("|"))).ok()
        };
        Allow {
            everything: false,
            re,
        }
    }

    pub fn everything(&self) -> bool {
        self.everything
    }

    /// A valid name matched by a pattern. Names that are not valid repository names (encoded,
    /// upper case, dot segments) are never public.
    pub fn allows(&self, name: &str) -> bool {
        if self.everything {
            return true;
        }
        is_valid_name(name) && self.re.as_ref().is_some_and(|r| r.is_match(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_globs() {
        let a = Allow::new(&["public/*".into(), "tools".into()]);
        assert!(a.allows("public/app"));
        assert!(a.allows("public/deep/app"));
        assert!(a.allows("tools"));
        assert!(!a.allows("tools/x"));
        assert!(!a.allows("secret/app"));
        assert!(!a.allows("public/../secret"));
        assert!(!a.allows("public/%2e%2e/secret"));
        assert!(!a.allows("Public/app"));
        assert!(Allow::new(&["*".into()]).allows("anything/at/all"));
        assert!(!Allow::new(&[]).allows("x"));
    }
}
