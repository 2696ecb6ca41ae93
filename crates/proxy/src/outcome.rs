//! How a request ended, as types: why the edge answered it itself ([`EdgeReason`]), why the
//! access policy refused it ([`PolicyReason`]), and which of the four ways it was answered
//! ([`Disposition`]). The policy, the edge's answers, the metrics, the access log and the
//! security tracker all speak these types; each has `label()` (the one string a metric label or
//! a log field shows) and `ALL` (every value, in the order the metrics are indexed by). Metrics
//! hold one counter per value (`[IntCounter; N]` indexed by `index()`), so a new reason is
//! counted and documented or the build fails (`metrics::tests`).

/// A fieldless enum with a bounded label per value: `label()`, `ALL`, `COUNT`, `index()`.
macro_rules! labelled {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident => $label:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every value, in declaration order (`ALL[v.index()] == v`).
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            /// How many values there are.
            pub const COUNT: usize = [$($label),+].len();

            /// The bounded label metrics and logs show.
            pub const fn label(self) -> &'static str {
                match self {
                    $($name::$variant => $label,)+
                }
            }

            /// Position in [`Self::ALL`].
            pub const fn index(self) -> usize {
                self as usize
            }
        }
    };
}
pub(crate) use labelled;

labelled! {
    /// How a request was answered: the `decision` label of `registry_edge_http_requests_total`.
    pub enum Disposition {
        /// An upstream answered.
        Proxied => "proxied",
        /// The access policy refused it (enforce mode).
        Refused => "refused",
        /// The edge answered itself: misroute, redirect, limits, the gate, no upstream.
        Edge => "edge",
        /// Proxying failed.
        Error => "error",
    }
}

impl Disposition {
    /// `refused`: the policy refused the request (in enforce mode: in detect mode the request
    /// went on); `failed`: proxying ended in an error; `answered`: the edge wrote an answer of
    /// its own. A refusal wins over the rest, an error over an own answer (a 502 after a failed
    /// exchange is an error, not a choice).
    pub fn of(refused: bool, failed: bool, answered: bool) -> Disposition {
        if refused {
            Disposition::Refused
        } else if failed {
            Disposition::Error
        } else if answered {
            Disposition::Edge
        } else {
            Disposition::Proxied
        }
    }
}

labelled! {
    /// Why the edge answered a request itself (`registry_edge_http_edge_responses_total`, the
    /// access log's `edge`). The policy's refusals are [`PolicyReason`]s.
    pub enum EdgeReason {
        HeaderTooLarge => "header_too_large",
        UnknownHost => "unknown_host",
        BadHost => "bad_host",
        UnknownRegion => "unknown_region",
        NonCanonicalPath => "non_canonical_path",
        // The gate (registry_edge_gate::Reject).
        UnknownRoute => "unknown_route",
        NameInvalid => "name_invalid",
        ReferenceInvalid => "reference_invalid",
        DigestInvalid => "digest_invalid",
        MethodNotAllowed => "method_not_allowed",
        QueryInvalid => "query_invalid",
        // The token request parser (service/token.rs).
        TokenRequestInvalid => "token_request_invalid",
        TokenBodyType => "token_body_type",
        TokenBodyOverLimit => "token_body_over_limit",
        TokenBodyTimeout => "token_body_timeout",
        TokenServiceUnknown => "token_service_unknown",
        /// An upstream redirect to a URL no rewrite maps (registry.unmapped_redirects: refuse).
        UnmappedRedirect => "unmapped_redirect",
        HttpsRequired => "https_required",
        RedirectHttps => "redirect_https",
        NoUpstreamPeer => "no_upstream_peer",
        UpstreamTimeout => "upstream_timeout",
        UpstreamError => "upstream_error",
        BadRequest => "bad_request",
        Internal => "internal",
        /// An error that carried its own HTTP status.
        Status => "status",
        /// The client went away while its request was proxied: nothing could be written.
        ClientGone => "client_gone",
    }
}

impl From<registry_edge_gate::RejectReason> for EdgeReason {
    fn from(r: registry_edge_gate::RejectReason) -> EdgeReason {
        use registry_edge_gate::RejectReason as R;
        match r {
            R::NonCanonicalPath => EdgeReason::NonCanonicalPath,
            R::UnknownRoute => EdgeReason::UnknownRoute,
            R::NameInvalid => EdgeReason::NameInvalid,
            R::ReferenceInvalid => EdgeReason::ReferenceInvalid,
            R::DigestInvalid => EdgeReason::DigestInvalid,
            R::MethodNotAllowed => EdgeReason::MethodNotAllowed,
            R::QueryInvalid => EdgeReason::QueryInvalid,
        }
    }
}

labelled! {
    /// Why the access policy refused a request (`registry_edge_access_refusals_total`, the
    /// access log's `decision`).
    pub enum PolicyReason {
        DenyCidr => "deny_cidr",
        Embargo => "embargo",
        UnknownCountry => "unknown_country",
        ReadOnly => "read_only",
        TokenBodyTooLarge => "token_body_too_large",
        Catalog => "catalog",
        NotPublic => "not_public",
        RateLimit => "rate_limit",
        AutoBlock => "auto_block",
        /// A token request's scope for a hidden repository, dropped (the request goes on).
        HiddenScope => "hidden_scope",
    }
}

impl PolicyReason {
    /// Refused by the address and location checks (`registry_edge_geo_requests_total`'s
    /// `refused`).
    pub fn by_location(self) -> bool {
        matches!(
            self,
            PolicyReason::DenyCidr | PolicyReason::Embargo | PolicyReason::UnknownCountry
        )
    }
}

/// Why the edge wrote an answer of its own: a reason of its own, or the access policy's refusal
/// (counted as a refusal, not as an edge response).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Answered {
    Edge(EdgeReason),
    Policy(PolicyReason),
}

impl Answered {
    /// The access log's `edge` field.
    pub fn label(self) -> &'static str {
        match self {
            Answered::Edge(r) => r.label(),
            Answered::Policy(r) => r.label(),
        }
    }
}

impl From<EdgeReason> for Answered {
    fn from(r: EdgeReason) -> Answered {
        Answered::Edge(r)
    }
}

impl From<PolicyReason> for Answered {
    fn from(r: PolicyReason) -> Answered {
        Answered::Policy(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_index_order_and_labels_are_distinct() {
        fn check<T: Copy + PartialEq + std::fmt::Debug>(
            all: &[T],
            index: fn(T) -> usize,
            label: fn(T) -> &'static str,
        ) {
            let mut labels = std::collections::HashSet::new();
            for (i, &v) in all.iter().enumerate() {
                assert_eq!(index(v), i, "{v:?}");
                let l = label(v);
                assert!(
                    !l.is_empty() && l.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                    "{l}"
                );
                assert!(labels.insert(l), "duplicate label {l}");
            }
        }
        check(Disposition::ALL, Disposition::index, Disposition::label);
        check(EdgeReason::ALL, EdgeReason::index, EdgeReason::label);
        check(PolicyReason::ALL, PolicyReason::index, PolicyReason::label);
        assert_eq!(EdgeReason::ALL.len(), EdgeReason::COUNT);
    }

    #[test]
    fn a_refusal_wins_then_an_error_then_an_own_answer() {
        use Disposition::*;
        let cases = [
            ((false, false, false), Proxied),
            ((false, false, true), Edge),
            ((false, true, false), Error),
            ((false, true, true), Error),
            ((true, false, false), Refused),
            ((true, true, true), Refused),
        ];
        for ((refused, failed, answered), want) in cases {
            assert_eq!(Disposition::of(refused, failed, answered), want);
        }
    }

    #[test]
    fn every_gate_reason_keeps_its_label() {
        use registry_edge_gate::RejectReason as R;
        for r in [
            R::NonCanonicalPath,
            R::UnknownRoute,
            R::NameInvalid,
            R::ReferenceInvalid,
            R::DigestInvalid,
            R::MethodNotAllowed,
            R::QueryInvalid,
        ] {
            assert_eq!(EdgeReason::from(r).label(), r.label());
        }
    }

    #[test]
    fn only_address_and_country_checks_are_location_refusals() {
        let location: Vec<_> = PolicyReason::ALL
            .iter()
            .filter(|r| r.by_location())
            .map(|r| r.label())
            .collect();
        assert_eq!(location, ["deny_cidr", "embargo", "unknown_country"]);
    }
}
