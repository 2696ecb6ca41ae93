//! A token request (`GET <realm>?...` or a `POST` form body) as known parameters.
//!
//! Token servers decode parameter names and values (Go's `net/url`, ASP.NET), so the edge
//! decodes them the same way ([`crate::form`]) and accepts only the names that docker,
//! containerd, oras and the Azure CLI send. A name that equals a known one only after
//! case-folding (`Scope=`) is refused (ASP.NET would read it as `scope`, Go would not), and so is
//! a repeated parameter other than `scope` (the first or the last wins, depending on the reader).
//! What goes upstream is [`TokenRequest::serialize`]: the judged values, re-encoded.

use crate::form::{self, FormError};
use crate::grammar;

/// The parameters token clients send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenParam {
    Service,
    Scope,
    Account,
    ClientId,
    OfflineToken,
    GrantType,
    AccessType,
    RefreshToken,
    Username,
    Password,
    Tenant,
    AccessToken,
}

impl TokenParam {
    pub const ALL: [TokenParam; 12] = [
        TokenParam::Service,
        TokenParam::Scope,
        TokenParam::Account,
        TokenParam::ClientId,
        TokenParam::OfflineToken,
        TokenParam::GrantType,
        TokenParam::AccessType,
        TokenParam::RefreshToken,
        TokenParam::Username,
        TokenParam::Password,
        TokenParam::Tenant,
        TokenParam::AccessToken,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TokenParam::Service => "service",
            TokenParam::Scope => "scope",
            TokenParam::Account => "account",
            TokenParam::ClientId => "client_id",
            TokenParam::OfflineToken => "offline_token",
            TokenParam::GrantType => "grant_type",
            TokenParam::AccessType => "access_type",
            TokenParam::RefreshToken => "refresh_token",
            TokenParam::Username => "username",
            TokenParam::Password => "password",
            TokenParam::Tenant => "tenant",
            TokenParam::AccessToken => "access_token",
        }
    }

    /// Its value may be logged (the others are credentials or carry them).
    pub fn harmless(self) -> bool {
        matches!(
            self,
            TokenParam::Service
                | TokenParam::Scope
                | TokenParam::ClientId
                | TokenParam::OfflineToken
                | TokenParam::GrantType
                | TokenParam::AccessType
        )
    }
}

/// Why a token request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenReject {
    Form(FormError),
    /// A name no token client sends.
    UnknownParameter,
    /// A known name in another case (`Scope`).
    CaseFolded,
    /// A parameter other than `scope` given twice.
    Duplicate,
    /// A value outside its parameter's grammar (`service` is a host name with a port,
    /// `grant_type` a word, `offline_token` true or false, ...).
    InvalidValue,
}

impl TokenReject {
    pub fn message(self) -> &'static str {
        match self {
            TokenReject::Form(e) => e.message(),
            TokenReject::UnknownParameter => {
                "the token request has a parameter token clients do not send"
            }
            TokenReject::CaseFolded => "a token request parameter name is not in lower case",
            TokenReject::Duplicate => "a token request parameter other than scope is repeated",
            TokenReject::InvalidValue => {
                "a token request parameter has a value outside its grammar"
            }
        }
    }
}

/// A scope `type[(class)]:name:actions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scope<'a> {
    pub resource_type: &'a str,
    pub class: Option<&'a str>,
    pub name: &'a str,
    pub actions: &'a str,
}

/// One scope of a `scope` value (which may hold several, separated by spaces).
pub fn parse_scope(s: &str) -> Option<Scope<'_>> {
    let (head, rest) = s.split_once(':')?;
    let (name, actions) = rest.rsplit_once(':')?;
    let (resource_type, class) = match head.split_once('(') {
        Some((t, c)) => (t, Some(c.strip_suffix(')')?)),
        None => (head, None),
    };
    let word = |w: &str| {
        !w.is_empty()
            && w.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    let action_ok = |a: &str| {
        a == "*" || (!a.is_empty() && a.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
    };
    if !word(resource_type)
        || !class.is_none_or(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_alphanumeric()))
        || name.is_empty()
        || !actions.split(',').all(action_ok)
    {
        return None;
    }
    Some(Scope {
        resource_type,
        class,
        name,
        actions,
    })
}

impl<'a> Scope<'a> {
    /// The repository a `repository` scope names, when it is a valid name.
    pub fn repository(&self) -> Option<&'a str> {
        (self.resource_type == "repository" && grammar::is_name(self.name)).then_some(self.name)
    }

    /// `registry:catalog:*`, which lists every repository.
    pub fn is_catalog(&self) -> bool {
        self.resource_type == "registry" && self.name == "catalog"
    }
}

/// The values with a grammar of their own; credentials, tokens, names and scopes are free text
/// (control characters are refused for every value by [`crate::form`]).
fn valid_value(p: TokenParam, v: &str) -> bool {
    let word = |extra: &[u8]| {
        !v.is_empty()
            && v.len() <= 255
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || extra.contains(&b))
    };
    match p {
        // The token audience: a registry's host name or address, with a port.
        TokenParam::Service => word(b".-:_[]"),
        TokenParam::GrantType | TokenParam::AccessType => word(b"_-:."),
        TokenParam::OfflineToken => v == "true" || v == "false",
        TokenParam::ClientId => word(b"._-"),
        _ => true,
    }
}

/// A token request's parameters, decoded, in the order received.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TokenRequest {
    pub params: Vec<(TokenParam, String)>,
}

impl TokenRequest {
    /// A query string or form body.
    pub fn parse(raw: &str) -> Result<TokenRequest, TokenReject> {
        let pairs = form::pairs(raw).map_err(TokenReject::Form)?;
        let mut params: Vec<(TokenParam, String)> = Vec::with_capacity(pairs.len());
        for (k, v) in pairs {
            let p = match TokenParam::ALL.iter().find(|p| p.as_str() == k) {
                Some(p) => *p,
                None if TokenParam::ALL
                    .iter()
                    .any(|p| p.as_str().eq_ignore_ascii_case(&k)) =>
                {
                    return Err(TokenReject::CaseFolded)
                }
                None => return Err(TokenReject::UnknownParameter),
            };
            if p != TokenParam::Scope && params.iter().any(|(q, _)| *q == p) {
                return Err(TokenReject::Duplicate);
            }
            if !valid_value(p, &v) {
                return Err(TokenReject::InvalidValue);
            }
            params.push((p, v));
        }
        Ok(TokenRequest { params })
    }

    pub fn get(&self, p: TokenParam) -> Option<&str> {
        self.params
            .iter()
            .find(|(q, _)| *q == p)
            .map(|(_, v)| v.as_str())
    }

    /// Every scope of every `scope` parameter.
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.params
            .iter()
            .filter(|(p, _)| *p == TokenParam::Scope)
            .flat_map(|(_, v)| v.split(' ').filter(|s| !s.is_empty()))
    }

    /// Keeps the scopes `keep` accepts (unparsable ones are given as `None`); a `scope`
    /// parameter left with none is removed. Returns how many scopes were dropped.
    pub fn retain_scopes(&mut self, mut keep: impl FnMut(Option<Scope<'_>>) -> bool) -> usize {
        let mut dropped = 0;
        for (p, v) in &mut self.params {
            if *p != TokenParam::Scope {
                continue;
            }
            let kept: Vec<&str> = v
                .split(' ')
                .filter(|s| !s.is_empty())
                .filter(|s| {
                    let k = keep(parse_scope(s));
                    dropped += usize::from(!k);
                    k
                })
                .collect();
            *v = kept.join(" ");
        }
        self.params
            .retain(|(p, v)| *p != TokenParam::Scope || !v.is_empty());
        dropped
    }

    /// Replaces a parameter's value (the first occurrence).
    pub fn set(&mut self, p: TokenParam, value: String) {
        if let Some(slot) = self.params.iter_mut().find(|(q, _)| *q == p) {
            slot.1 = value;
        }
    }

    /// The parameters re-encoded (`application/x-www-form-urlencoded`).
    pub fn serialize(&self) -> String {
        form::serialize(self.params.iter().map(|(p, v)| (p.as_str(), v.as_str())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_decoded_and_held_to_the_known_set() {
        let r = TokenRequest::parse("service=reg&sc%6fpe=repository:demo/app:pull").unwrap();
        assert_eq!(r.scopes().collect::<Vec<_>>(), ["repository:demo/app:pull"]);
        assert_eq!(
            TokenRequest::parse("Scope=repository:demo/app:pull"),
            Err(TokenReject::CaseFolded)
        );
        assert_eq!(TokenRequest::parse("SCOPE=x"), Err(TokenReject::CaseFolded));
        assert_eq!(
            TokenRequest::parse("service=a&service=b"),
            Err(TokenReject::Duplicate)
        );
        assert_eq!(
            TokenRequest::parse("service=a;scope=b"),
            Err(TokenReject::Form(FormError::Semicolon))
        );
        assert_eq!(
            TokenRequest::parse("{\"scope\":\"repository:demo/app:pull\"}"),
            Err(TokenReject::UnknownParameter)
        );
        assert_eq!(
            TokenRequest::parse("x=1"),
            Err(TokenReject::UnknownParameter)
        );
        assert!(TokenRequest::parse("scope=a&scope=b").is_ok());
        assert_eq!(
            TokenRequest::parse("service=reg%26scope%3Drepository%3Ademo%2Fapp%3Apull"),
            Err(TokenReject::InvalidValue)
        );
        assert_eq!(
            TokenRequest::parse("offline_token=yes"),
            Err(TokenReject::InvalidValue)
        );
        assert!(TokenRequest::parse(
            "grant_type=refresh_token&service=acr.contoso.com&client_id=docker&offline_token=true&access_type=offline"
        )
        .is_ok());
        assert!(TokenRequest::parse("").unwrap().params.is_empty());
    }

    #[test]
    fn scopes_are_filtered_and_serialised() {
        let mut r = TokenRequest::parse(
            "service=reg&scope=repository%3Apublic%2Fapp%3Apull+repository:demo/app:pull&scope=registry:catalog:*&scope=Repository:demo/app:pull&account=u",
        )
        .unwrap();
        let dropped = r.retain_scopes(|s| {
            s.and_then(|s| s.repository())
                .is_some_and(|n| n.starts_with("public/"))
        });
        assert_eq!(dropped, 3);
        assert_eq!(
            r.serialize(),
            "service=reg&scope=repository%3Apublic%2Fapp%3Apull&account=u"
        );
    }

    #[test]
    fn scope_grammar() {
        let s = parse_scope("repository(plugin):team/app:pull,push").unwrap();
        assert_eq!(
            (s.resource_type, s.class, s.name, s.actions),
            ("repository", Some("plugin"), "team/app", "pull,push")
        );
        assert_eq!(s.repository(), Some("team/app"));
        assert!(parse_scope("registry:catalog:*").unwrap().is_catalog());
        assert_eq!(
            parse_scope("repository:host:5000/app:pull").unwrap().name,
            "host:5000/app"
        );
        assert_eq!(
            parse_scope("repository:host:5000/app:pull")
                .unwrap()
                .repository(),
            None
        );
        assert!(parse_scope("Repository:a:pull").is_none());
        assert!(parse_scope("repository:a").is_none());
        assert!(parse_scope("repository:a:pu\"ll").is_none());
        assert_eq!(
            parse_scope("repository:Demo/app:pull")
                .unwrap()
                .repository(),
            None
        );
    }
}
