//! serde_yaml keeps no positions once a value is deserialised, so validation errors would have no
//! line to point at. This module walks the same text with an event parser and records, for every
//! dotted path (`registry.data_endpoints[1].public_host`), where its value starts.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, Parser};

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub col: usize,
}

/// Path → position of the value (and of its key, for mappings).
#[derive(Debug, Default)]
pub struct PositionIndex {
    values: HashMap<String, Position>,
}

enum Frame {
    Mapping {
        path: String,
        /// The key whose value comes next, or `None` when a key comes next.
        pending_key: Option<String>,
    },
    Sequence {
        path: String,
        next: usize,
    },
}

impl PositionIndex {
    /// Builds the index. A text the event parser rejects gives an empty index: serde_yaml reports
    /// the syntax error itself, with its position.
    pub fn build(text: &str) -> PositionIndex {
        let mut index = PositionIndex::default();
        let mut parser = Parser::new_from_str(text);
        let mut stack: Vec<Frame> = Vec::new();
        while let Ok((event, marker)) = parser.next_token() {
            let pos = Position {
                line: marker.line(),
                col: marker.col() + 1,
            };
            match event {
                Event::StreamEnd => break,
                Event::Scalar(value, ..) => {
                    if let Some(path) = value_path(&mut stack, Some(&value)) {
                        index.values.entry(path).or_insert(pos);
                    }
                }
                Event::Alias(_) => {
                    if let Some(path) = value_path(&mut stack, None) {
                        index.values.entry(path).or_insert(pos);
                    }
                }
                Event::MappingStart(..) => {
                    let path = value_path(&mut stack, None).unwrap_or_default();
                    index.values.entry(path.clone()).or_insert(pos);
                    stack.push(Frame::Mapping {
                        path,
                        pending_key: None,
                    });
                }
                Event::SequenceStart(..) => {
                    let path = value_path(&mut stack, None).unwrap_or_default();
                    index.values.entry(path.clone()).or_insert(pos);
                    stack.push(Frame::Sequence { path, next: 0 });
                }
                Event::MappingEnd | Event::SequenceEnd => {
                    stack.pop();
                }
                _ => {}
            }
        }
        index
    }

    /// The position of `path`, or of its nearest recorded ancestor (a missing key is reported at
    /// the mapping that should hold it).
    pub fn find(&self, path: &str) -> Option<Position> {
        let mut current = path;
        loop {
            if let Some(pos) = self.values.get(current) {
                return Some(*pos);
            }
            if current.is_empty() {
                return None;
            }
            current = parent(current);
        }
    }
}

fn parent(path: &str) -> &str {
    let cut = path.rfind(['.', '[']).unwrap_or(0);
    &path[..cut]
}

/// Called for every node: when the innermost frame is a mapping waiting for a key, a scalar is
/// that key and has no path of its own (`None`); otherwise returns the path of the node.
fn value_path(stack: &mut [Frame], scalar: Option<&str>) -> Option<String> {
    match stack.last_mut() {
        None => Some(String::new()),
        Some(Frame::Sequence { path, next }) => {
            let p = format!("{path}[{next}]");
            *next += 1;
            Some(p)
        }
        Some(Frame::Mapping { path, pending_key }) => match pending_key.take() {
            Some(key) => Some(join(path, &key)),
            None => {
                // A key. Complex keys (mappings as keys) do not occur in this format.
                *pending_key = Some(scalar.unwrap_or_default().to_owned());
                None
            }
        },
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_positions() {
        let text = "version: 1\nregistry:\n  login_server: a.example\n  data_endpoints:\n    - region: eastus\n      endpoint: b\n    - { region: westus, endpoint: c }\nlist: [1, 2]\n";
        let idx = PositionIndex::build(text);
        assert_eq!(idx.find("version"), Some(Position { line: 1, col: 10 }));
        assert_eq!(
            idx.find("registry.login_server"),
            Some(Position { line: 3, col: 17 })
        );
        assert_eq!(
            idx.find("registry.data_endpoints[0].region"),
            Some(Position { line: 5, col: 15 })
        );
        assert_eq!(
            idx.find("registry.data_endpoints[1].endpoint"),
            Some(Position { line: 7, col: 35 })
        );
        assert_eq!(idx.find("list[1]"), Some(Position { line: 8, col: 11 }));
        // Missing key: falls back to the mapping that should hold it.
        assert_eq!(
            idx.find("registry.data_endpoints[1].public_host"),
            Some(Position { line: 7, col: 7 })
        );
    }
}
