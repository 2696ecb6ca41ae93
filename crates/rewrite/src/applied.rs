//! The record of which rules fired, kept off the heap for the common case.

const INLINE: usize = 8;

/// Which rules fired, in the order they ran. Indices are those of
/// [`Engine::rule_name`](crate::Engine::rule_name). Up to eight entries live inline, so a
/// response where nothing (or little) fired costs no allocation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    inline: [u32; INLINE],
    inline_len: u8,
    spill: Vec<u32>,
}

impl Applied {
    pub fn is_empty(&self) -> bool {
        self.inline_len == 0
    }

    pub fn len(&self) -> usize {
        usize::from(self.inline_len) + self.spill.len()
    }

    /// Rule indices, in the order the rules ran.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.inline[..usize::from(self.inline_len)]
            .iter()
            .chain(self.spill.iter())
            .map(|&index| index as usize)
    }

    pub(crate) fn push(&mut self, index: usize) {
        // Rule indices come from a `Vec` of compiled rules; four billion rules is not a config.
        let index = u32::try_from(index).unwrap_or(u32::MAX);
        let len = usize::from(self.inline_len);
        if len < INLINE {
            self.inline[len] = index;
            self.inline_len += 1;
        } else {
            self.spill.push(index);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_order_across_the_inline_limit() {
        let mut applied = Applied::default();
        assert!(applied.is_empty());
        for i in 0..20 {
            applied.push(i * 3);
        }
        assert_eq!(applied.len(), 20);
        assert!(applied.iter().eq((0..20).map(|i| i * 3)));
    }
}
