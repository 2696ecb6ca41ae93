//! The header container the engine edits.

use http::{HeaderMap, HeaderName, HeaderValue};

/// Abstracts the header map so the proxy can rewrite pingora's `ResponseHeader` (which keeps a
/// case-preserving copy of the names and must be changed through its own methods) in place.
pub trait HeaderStore {
    fn headers(&self) -> &HeaderMap;
    /// Replaces every value of `name` with `values`, in order; an empty `values` removes it.
    fn replace_all(&mut self, name: &HeaderName, values: Vec<HeaderValue>);
    fn remove_all(&mut self, name: &HeaderName);

    /// Replaces every value of `name` with one value. Stores that can do so without building
    /// a `Vec` should override it: it is the common case of a rewrite.
    fn replace_one(&mut self, name: &HeaderName, value: HeaderValue) {
        self.replace_all(name, vec![value]);
    }
}

impl HeaderStore for HeaderMap {
    fn headers(&self) -> &HeaderMap {
        self
    }

    fn replace_all(&mut self, name: &HeaderName, values: Vec<HeaderValue>) {
        let mut values = values.into_iter();
        match values.next() {
            // `insert` keeps the header where it was among the others, which keeps diffs of
            // recorded responses readable; the remaining values follow it.
            Some(first) => {
                self.insert(name.clone(), first);
                for value in values {
                    self.append(name.clone(), value);
                }
            }
            None => {
                self.remove(name);
            }
        }
    }

    fn remove_all(&mut self, name: &HeaderName) {
        self.remove(name);
    }

    fn replace_one(&mut self, name: &HeaderName, value: HeaderValue) {
        // In place when the header has a single value: `insert` first reserves room for a new
        // entry, which reallocates a map that was built full (as parsed and cloned maps are).
        let mut values = self.get_all(name).iter();
        if let (Some(_), None) = (values.next(), values.next()) {
            if let Some(slot) = self.get_mut(name) {
                *slot = value;
                return;
            }
        }
        self.insert(name.clone(), value);
    }
}
