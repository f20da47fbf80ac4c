//! A parsed rules file and the decision procedure: find the `allow`
//! statements whose `match` path fits the document and whose methods include
//! the request's, and allow if any of their conditions is true.
//!
//! Matching follows Firestore (rules_version 2): a block's path is matched
//! against a prefix of the document path, nested blocks continue with the
//! rest, and a block's `allow`s apply only when its path consumed the whole
//! document path. `{name}` matches one segment and binds it as a string;
//! `{name=**}` matches zero or more segments and binds them as a path: at
//! the end of a path it takes everything left, in the middle
//! (`/{path=**}/posts/{post}`, Firestore's collection-group form) any split
//! that lets the rest of the path match. One per `match` path. The `/databases/{database}/documents` wrapper is optional
//! and consumes nothing. Several matching `allow`s are OR'ed; no match denies.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::Arc;

use hearth_protocol::{CollectionPath, DocPath, Document, Map, Timestamp, Value};

use crate::ast::{Allow, FunctionDef, MatchBlock, MatchSeg, Method};
use crate::checker;
use crate::error::RulesError;
use crate::eval::{self, Env, Evaluator, RMap, RVal, RegexCache};
use crate::parser::Parser;
use crate::DocumentLookup;

/// Who is asking.
#[derive(Debug, Clone, PartialEq)]
pub enum Principal {
    /// The server itself or an admin-key request: bypasses rules (but see
    /// `AccessControl` for system collections, which only it may reach).
    Admin,
    /// A signed-in user. `claims` are the access token's full claims
    /// (`email`, `email_verified`, `sign_in_provider`, custom claims, ...);
    /// rules see them as `request.auth.token`.
    User {
        uid: String,
        claims: BTreeMap<String, Value>,
    },
    /// No credentials: `request.auth` is `null`.
    Unauthenticated,
}

impl Principal {
    /// A user with no claims beyond the uid.
    pub fn user(uid: impl Into<String>) -> Principal {
        Principal::User {
            uid: uid.into(),
            claims: BTreeMap::new(),
        }
    }

    pub fn is_admin(&self) -> bool {
        matches!(self, Principal::Admin)
    }

    /// A stable name for ownership (REST transactions) and for keys derived
    /// from the caller (socket mutation records): `admin`, `user:<uid>` or
    /// `anonymous`. Never a secret; changing it would orphan stored records.
    pub fn stable_key(&self) -> String {
        match self {
            Principal::Admin => "admin".into(),
            Principal::User { uid, .. } => format!("user:{uid}"),
            Principal::Unauthenticated => "anonymous".into(),
        }
    }
}

/// One operation on one document, as a rule sees it.
#[derive(Debug, Clone, Copy)]
pub struct RuleRequest<'a> {
    pub principal: &'a Principal,
    pub method: Method,
    pub path: &'a DocPath,
    /// The stored document (`resource`), if it exists.
    pub resource: Option<&'a Document>,
    /// For create and update: the document's fields after the write
    /// (`request.resource.data`).
    pub new_data: Option<&'a Map>,
    /// `request.time`.
    pub time: Timestamp,
}

/// The outcome of one evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation {
    pub allowed: bool,
    /// Errors met in conditions that matched, as `line:column: message`
    /// (each one made its `allow` false). For rule authors, not clients.
    pub errors: Vec<String>,
}

/// What `check_list` can decide before seeing any document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ListPrecheck {
    /// No `allow list` matches documents of this collection: refuse.
    NoRule,
    /// Every matching rule is false whatever the document: refuse.
    Denied,
    /// Some rule is true whatever the document: every document is readable.
    Allowed,
    /// It depends on the document: filter per document.
    PerDocument,
}

/// A parsed, immutable rules file. Cheap to share (`Arc` inside).
#[derive(Debug, Clone)]
pub struct Ruleset {
    root: Arc<MatchBlock>,
    regexes: Arc<RegexCache>,
}

/// A document path segment, or one not known yet (the id of a document a
/// query might return).
#[derive(Clone, Copy)]
enum Seg<'p> {
    Known(&'p str),
    Unknown,
}

type Scope = HashMap<String, Arc<FunctionDef>>;
type Funcs<'r> = Vec<&'r Scope>;
/// Called for each matching `allow` with the path variables and function
/// scopes in force; returns true to stop (allowed).
type Visitor<'r, 'f> = dyn FnMut(&'r Allow, &[(String, RVal)], &[&'r Scope]) -> bool + 'f;

impl Ruleset {
    /// Parses a rules file. Errors carry line and column.
    ///
    /// Parsing runs on a helper thread with a large stack: the parser is
    /// recursive, and a file nested up to the limits needs more stack than a
    /// small worker thread has in a debug build. Parsing is rare (start-up,
    /// reload, `rules test`), so the thread costs nothing that matters.
    pub fn parse(text: &str) -> Result<Ruleset, RulesError> {
        const PARSER_STACK: usize = 32 * 1024 * 1024;
        let parsed = std::thread::scope(|scope| {
            let handle = std::thread::Builder::new()
                .name("hearth-rules-parser".into())
                .stack_size(PARSER_STACK)
                .spawn_scoped(scope, || parse_and_check(text));
            match handle {
                Ok(h) => h.join().unwrap_or_else(|_| {
                    Err(RulesError::syntax(
                        1,
                        1,
                        "internal error while parsing the rules",
                    ))
                }),
                // No thread to be had: parse here (fine for ordinary files).
                Err(_) => parse_and_check(text),
            }
        });
        let root = parsed?;
        Ok(Ruleset {
            root: Arc::new(root),
            regexes: Arc::default(),
        })
    }

    /// No rules: everything but the admin is denied.
    pub fn deny_all() -> Ruleset {
        Ruleset {
            root: Arc::new(MatchBlock {
                path: vec![],
                fixed: vec![],
                functions: HashMap::new(),
                allows: vec![],
                children: vec![],
            }),
            regexes: Arc::default(),
        }
    }

    /// Everything allowed to everyone (development only).
    pub fn allow_all() -> Ruleset {
        Ruleset::parse("match /{document=**} { allow read, write; }")
            .unwrap_or_else(|_| Ruleset::deny_all())
    }

    /// Decides one request. The admin principal is always allowed; system
    /// paths are the caller's business (see `AccessControl`).
    pub fn evaluate(&self, req: &RuleRequest<'_>, lookup: &dyn DocumentLookup) -> Evaluation {
        if req.principal.is_admin() {
            return Evaluation {
                allowed: true,
                errors: vec![],
            };
        }
        let own_segments: Vec<String> = req.path.segments().to_vec();
        let new_resource = match (req.method, req.new_data) {
            (Method::Create | Method::Update, Some(data)) => eval::resource_value(req.path, data),
            _ => RVal::Null,
        };
        let request = request_value(
            req.principal,
            req.method,
            RVal::Path(Rc::new(own_segments.clone())),
            req.time,
            new_resource.clone(),
        );
        let resource = req.resource.map_or(RVal::Null, eval::document_value);
        let own_after = match req.method {
            Method::Create | Method::Update => Some(new_resource),
            Method::Delete => Some(RVal::Null),
            Method::Get | Method::List => None,
        };
        let ev = Evaluator::new(
            lookup,
            request,
            resource,
            Some(own_segments),
            own_after,
            &self.regexes,
        );
        let segs: Vec<Seg<'_>> = req.path.segments().iter().map(|s| Seg::Known(s)).collect();
        let mut errors = Vec::new();
        let allowed = self.visit(&segs, &mut |allow, vars, funcs| {
            decide(&ev, allow, req.method, vars, funcs, &mut errors)
        });
        Evaluation { allowed, errors }
    }

    /// Evaluates the `list` rules for an unseen document of `collection`.
    pub(crate) fn list_precheck(
        &self,
        principal: &Principal,
        collection: &CollectionPath,
        time: Timestamp,
        lookup: &dyn DocumentLookup,
    ) -> ListPrecheck {
        let request = request_value(principal, Method::List, RVal::Unknown, time, RVal::Null);
        let ev = Evaluator::new(lookup, request, RVal::Unknown, None, None, &self.regexes);
        let mut segs: Vec<Seg<'_>> = collection
            .segments()
            .iter()
            .map(|s| Seg::Known(s))
            .collect();
        segs.push(Seg::Unknown);
        let mut any_rule = false;
        let mut unknown = false;
        let allowed = self.visit(&segs, &mut |allow, vars, funcs| {
            if allow.methods & Method::List.bit() == 0 {
                return false;
            }
            any_rule = true;
            let Some(cond) = &allow.condition else {
                return true;
            };
            let env = Env {
                locals: vec![],
                vars,
                funcs,
            };
            match ev.condition(cond, &env) {
                Ok(b) => b,
                Err(_) => {
                    unknown = true;
                    false
                }
            }
        });
        match (allowed, any_rule, unknown) {
            (true, _, _) => ListPrecheck::Allowed,
            (false, false, _) => ListPrecheck::NoRule,
            (false, true, true) => ListPrecheck::PerDocument,
            (false, true, false) => ListPrecheck::Denied,
        }
    }

    /// Calls `f` for each `allow` whose block matches `path`, innermost
    /// scopes last; stops and returns true as soon as `f` does.
    fn visit<'r>(&'r self, path: &[Seg<'_>], f: &mut Visitor<'r, '_>) -> bool {
        let mut vars = Vec::new();
        let mut funcs: Funcs<'r> = Vec::new();
        let mut steps = 0;
        visit_block(&self.root, path, &mut vars, &mut funcs, &mut steps, f)
    }
}

fn parse_and_check(text: &str) -> Result<MatchBlock, RulesError> {
    let root = Parser::new(text).parse_file()?;
    checker::check(&root)?;
    Ok(root)
}

/// Block visits allowed in one decision: a recursive wildcard in the middle
/// of a path tries every split, and nested ones multiply, so a hostile file
/// could otherwise make matching itself slow. Past it, matching stops (deny).
const MAX_MATCH_STEPS: u32 = 10_000;

/// The path value bound by `{name=**}` for `segs`.
fn rest_value(segs: &[Seg<'_>]) -> RVal {
    if segs.iter().any(|s| matches!(s, Seg::Unknown)) {
        return RVal::Unknown;
    }
    RVal::Path(Rc::new(
        segs.iter()
            .map(|s| match s {
                Seg::Known(s) => s.to_string(),
                Seg::Unknown => String::new(),
            })
            .collect(),
    ))
}

/// Every way `pattern` can match a prefix of `rest`: how many segments it
/// consumed and the variables it bound. A trailing `{x=**}` takes all that
/// is left; one in the middle (`/{path=**}/posts/{id}`, the collection-group
/// form) tries each split.
fn match_prefix(
    pattern: &[MatchSeg],
    rest: &[Seg<'_>],
    k: usize,
    bound: &mut Vec<(String, RVal)>,
    steps: &mut u32,
    out: &mut Vec<(usize, Vec<(String, RVal)>)>,
) {
    *steps += 1;
    if *steps > MAX_MATCH_STEPS {
        return;
    }
    let Some((seg, more)) = pattern.split_first() else {
        out.push((k, bound.clone()));
        return;
    };
    match (seg, rest.get(k)) {
        (MatchSeg::Lit(l), Some(Seg::Known(s))) if l == s => {
            match_prefix(more, rest, k + 1, bound, steps, out)
        }
        (MatchSeg::Lit(_), Some(Seg::Unknown)) => {
            match_prefix(more, rest, k + 1, bound, steps, out)
        }
        (MatchSeg::Var(v), Some(s)) => {
            let value = match s {
                Seg::Known(s) => RVal::str(s),
                Seg::Unknown => RVal::Unknown,
            };
            bound.push((v.clone(), value));
            match_prefix(more, rest, k + 1, bound, steps, out);
            bound.pop();
        }
        (MatchSeg::Rest(v), _) => {
            let k = k.min(rest.len());
            let ends = if more.is_empty() {
                rest.len()..=rest.len()
            } else {
                k..=rest.len()
            };
            for end in ends {
                bound.push((v.clone(), rest_value(&rest[k..end])));
                match_prefix(more, rest, end, bound, steps, out);
                bound.pop();
            }
        }
        _ => {}
    }
}

fn visit_block<'r>(
    block: &'r MatchBlock,
    rest: &[Seg<'_>],
    vars: &mut Vec<(String, RVal)>,
    funcs: &mut Funcs<'r>,
    steps: &mut u32,
    f: &mut Visitor<'r, '_>,
) -> bool {
    let mut matches = Vec::new();
    match_prefix(&block.path, rest, 0, &mut Vec::new(), steps, &mut matches);
    if matches.is_empty() {
        return false;
    }
    let saved = vars.len();
    funcs.push(&block.functions);
    let mut stop = false;
    for (k, bound) in matches {
        vars.truncate(saved);
        for (name, value) in &block.fixed {
            vars.push((name.clone(), RVal::str(value)));
        }
        vars.extend(bound);
        let remaining = &rest[k..];
        if remaining.is_empty() {
            for allow in &block.allows {
                if f(allow, vars, funcs) {
                    stop = true;
                    break;
                }
            }
        }
        if !stop {
            for child in &block.children {
                if *steps > MAX_MATCH_STEPS {
                    break;
                }
                if visit_block(child, remaining, vars, funcs, steps, f) {
                    stop = true;
                    break;
                }
            }
        }
        if stop {
            break;
        }
    }
    funcs.pop();
    vars.truncate(saved);
    stop
}

fn decide(
    ev: &Evaluator<'_>,
    allow: &Allow,
    method: Method,
    vars: &[(String, RVal)],
    funcs: &[&Scope],
    errors: &mut Vec<String>,
) -> bool {
    if allow.methods & method.bit() == 0 {
        return false;
    }
    let Some(cond) = &allow.condition else {
        return true;
    };
    let env = Env {
        locals: vec![],
        vars,
        funcs,
    };
    match ev.condition(cond, &env) {
        Ok(b) => b,
        Err(e) => {
            errors.push(format!("{}: {}", e.pos, e.message));
            false
        }
    }
}

/// `request.auth`: null, or `{uid, token}` where `token` holds the claims.
/// Firebase rules read the provider as `token.firebase.sign_in_provider`,
/// so a top-level `sign_in_provider` claim is mirrored there.
fn auth_value(principal: &Principal) -> RVal {
    match principal {
        Principal::Admin | Principal::Unauthenticated => RVal::Null,
        Principal::User { uid, claims } => {
            let mut token: RMap = claims
                .iter()
                .map(|(k, v)| (k.clone(), RVal::from_value(v)))
                .collect();
            token.entry("sub".into()).or_insert_with(|| RVal::str(uid));
            if let Some(provider) = claims.get("sign_in_provider") {
                if !token.contains_key("firebase") {
                    let mut fb = RMap::new();
                    fb.insert("sign_in_provider".into(), RVal::from_value(provider));
                    token.insert("firebase".into(), RVal::map(fb));
                }
            }
            let mut auth = RMap::new();
            auth.insert("uid".into(), RVal::str(uid));
            auth.insert("token".into(), RVal::map(token));
            RVal::map(auth)
        }
    }
}

fn request_value(
    principal: &Principal,
    method: Method,
    path: RVal,
    time: Timestamp,
    resource: RVal,
) -> RVal {
    let mut m = RMap::new();
    m.insert("auth".into(), auth_value(principal));
    m.insert("method".into(), RVal::str(method.as_str()));
    m.insert("path".into(), path);
    m.insert("time".into(), RVal::Timestamp(time));
    m.insert("resource".into(), resource);
    RVal::map(m)
}
