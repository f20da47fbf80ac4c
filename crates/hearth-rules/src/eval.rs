//! The expression evaluator: runtime values, operators, methods and the
//! builtins (`get`, `exists`, `math.*`, `duration.*`, ...).
//!
//! Semantics follow Firestore:
//! - Any error (a missing field, a type mismatch, a `get()` over budget)
//!   makes the expression an error, and a rule whose condition is an error
//!   denies. `&&` and `||` absorb errors the way Firestore (and CEL) do:
//!   `error || true` is `true` and `error && false` is `false`, so the result
//!   does not depend on the order of the operands.
//! - `==` between different types is `false`, not an error; an int equals the
//!   float of the same value.
//!
//! Work is bounded so that a hostile rules file or document cannot hang the
//! server: at most [`MAX_DOC_LOOKUPS`] distinct documents read by
//! `get`/`exists` per evaluation, [`MAX_CALL_DEPTH`] nested function calls
//! (and no recursion), [`MAX_EVAL_DEPTH`] nested evaluations (which bounds
//! the stack), and a budget of [`MAX_STEPS`] units of work, where
//! each expression node costs one and bulk operations (`hasAll`, `diff`,
//! `split`, ...) cost their size.
//!
//! The value [`RVal::Unknown`] stands for "some document we have not seen":
//! every operation on it is an error. `AccessControl::check_list` evaluates
//! `list` rules with `resource` unknown to find out whether a query can be
//! refused (or allowed) before looking at any document.

use std::cell::{Cell, RefCell};
use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::Arc;

use hearth_protocol::{DocPath, Document, Map, Timestamp, Value};

use crate::ast::*;
use crate::DocumentLookup;

/// Distinct documents `get()`/`exists()` may read in one evaluation
/// (Firestore allows 10 for single-document requests and 20 for batches).
pub const MAX_DOC_LOOKUPS: u32 = 20;
/// Nested user-function calls allowed in one evaluation.
pub const MAX_CALL_DEPTH: usize = 20;
/// Units of work allowed in one evaluation.
pub const MAX_STEPS: u64 = 200_000;
/// Nested expression evaluations allowed, counted across function calls.
pub const MAX_EVAL_DEPTH: u32 = 256;
/// Regexes longer than this are refused.
const MAX_REGEX_BYTES: usize = 1024;

pub(crate) type RMap = BTreeMap<String, RVal>;

/// A runtime value. Containers are reference-counted so that reading
/// `resource.data` does not copy the document.
#[derive(Debug, Clone)]
pub(crate) enum RVal {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Rc<str>),
    Bytes(Rc<Vec<u8>>),
    Timestamp(Timestamp),
    /// Nanoseconds.
    Duration(i64),
    List(Rc<Vec<RVal>>),
    Map(Rc<RMap>),
    /// Distinct elements, in insertion order.
    Set(Rc<Vec<RVal>>),
    /// Document path segments, without the `/databases/x/documents` prefix.
    Path(Rc<Vec<String>>),
    /// `a.diff(b)`: (a, b).
    Diff(Rc<(Rc<RMap>, Rc<RMap>)>),
    /// A value not known before a document is seen; see the module docs.
    Unknown,
}

impl RVal {
    pub fn str(s: &str) -> RVal {
        RVal::Str(Rc::from(s))
    }

    pub fn map(m: RMap) -> RVal {
        RVal::Map(Rc::new(m))
    }

    pub fn type_name(&self) -> &'static str {
        match self {
            RVal::Null => "null",
            RVal::Bool(_) => "bool",
            RVal::Int(_) => "int",
            RVal::Float(_) => "float",
            RVal::Str(_) => "string",
            RVal::Bytes(_) => "bytes",
            RVal::Timestamp(_) => "timestamp",
            RVal::Duration(_) => "duration",
            RVal::List(_) => "list",
            RVal::Map(_) => "map",
            RVal::Set(_) => "set",
            RVal::Path(_) => "path",
            RVal::Diff(_) => "map diff",
            RVal::Unknown => "unknown",
        }
    }

    pub fn from_value(v: &Value) -> RVal {
        match v {
            Value::Null => RVal::Null,
            Value::Bool(b) => RVal::Bool(*b),
            Value::Integer(i) => RVal::Int(*i),
            Value::Double(d) => RVal::Float(*d),
            Value::Timestamp(t) => RVal::Timestamp(*t),
            Value::String(s) => RVal::str(s),
            Value::Bytes(b) => RVal::Bytes(Rc::new(b.clone())),
            Value::Array(a) => RVal::List(Rc::new(a.iter().map(RVal::from_value).collect())),
            Value::Map(m) => RVal::Map(Rc::new(Self::from_map(m))),
        }
    }

    pub fn from_map(m: &Map) -> RMap {
        m.iter()
            .map(|(k, v)| (k.clone(), RVal::from_value(v)))
            .collect()
    }
}

/// An evaluation error; its message says what went wrong and where, for
/// rule authors (the test runner prints it). Never shown to API clients.
#[derive(Debug, Clone)]
pub(crate) struct EvalError {
    pub message: String,
    pub pos: Pos,
}

type EResult<T> = Result<T, EvalError>;

fn fail<T>(pos: Pos, message: impl Into<String>) -> EResult<T> {
    Err(EvalError {
        message: message.into(),
        pos,
    })
}

/// Variables visible to an expression.
pub(crate) struct Env<'e> {
    /// Function parameters and `let` bindings.
    pub locals: Vec<(String, RVal)>,
    /// Path variables bound by the enclosing `match` blocks.
    pub vars: &'e [(String, RVal)],
    /// Function definitions visible here, innermost block last.
    pub funcs: &'e [&'e HashMap<String, Arc<FunctionDef>>],
}

/// One evaluation's state: its request, its document lookups and budgets.
pub(crate) struct Evaluator<'a> {
    lookup: &'a dyn DocumentLookup,
    request: RVal,
    resource: RVal,
    /// The request's own document and its post-write state (`resource`
    /// shape, or null for a delete), for `getAfter`/`existsAfter`.
    own_path: Option<Vec<String>>,
    own_after: Option<RVal>,
    lookups: Cell<u32>,
    steps: Cell<u64>,
    depth: Cell<u32>,
    stack: RefCell<Vec<usize>>,
    doc_cache: RefCell<HashMap<Vec<String>, RVal>>,
    regexes: &'a RegexCache,
}

/// Compiled regular expressions shared by every evaluation of one ruleset
/// (compiling costs far more than matching). Bounded: once full, new
/// patterns (which could come from documents) are compiled but not kept.
#[derive(Debug, Default)]
pub(crate) struct RegexCache {
    map: parking_lot::Mutex<HashMap<String, Arc<regex::Regex>>>,
}

const MAX_CACHED_REGEXES: usize = 512;

impl RegexCache {
    fn get_or_compile(&self, pattern: &str) -> Result<Arc<regex::Regex>, regex::Error> {
        if let Some(r) = self.map.lock().get(pattern) {
            return Ok(Arc::clone(r));
        }
        let re = Arc::new(
            regex::RegexBuilder::new(pattern)
                .size_limit(1 << 20)
                .dfa_size_limit(1 << 20)
                .build()?,
        );
        let mut map = self.map.lock();
        if map.len() < MAX_CACHED_REGEXES {
            map.insert(pattern.to_string(), Arc::clone(&re));
        }
        Ok(re)
    }
}

/// The `resource` map for a document: `{data, id, __name__}`.
pub(crate) fn resource_value(path: &DocPath, fields: &Map) -> RVal {
    let mut m = RMap::new();
    m.insert("data".into(), RVal::map(RVal::from_map(fields)));
    m.insert("id".into(), RVal::str(path.id()));
    m.insert(
        "__name__".into(),
        RVal::Path(Rc::new(path.segments().to_vec())),
    );
    RVal::map(m)
}

pub(crate) fn document_value(doc: &Document) -> RVal {
    resource_value(&doc.path, &doc.fields)
}

const NAMESPACES: [&str; 4] = ["math", "duration", "timestamp", "hashing"];

impl<'a> Evaluator<'a> {
    pub fn new(
        lookup: &'a dyn DocumentLookup,
        request: RVal,
        resource: RVal,
        own_path: Option<Vec<String>>,
        own_after: Option<RVal>,
        regexes: &'a RegexCache,
    ) -> Evaluator<'a> {
        Evaluator {
            lookup,
            request,
            resource,
            own_path,
            own_after,
            lookups: Cell::new(0),
            steps: Cell::new(0),
            depth: Cell::new(0),
            stack: RefCell::new(Vec::new()),
            doc_cache: RefCell::new(HashMap::new()),
            regexes,
        }
    }

    fn charge(&self, units: u64, pos: Pos) -> EResult<()> {
        let total = self.steps.get().saturating_add(units);
        self.steps.set(total);
        if total > MAX_STEPS {
            return fail(
                pos,
                format!("evaluation exceeded its budget of {MAX_STEPS} steps"),
            );
        }
        Ok(())
    }

    /// Evaluates a rule condition: `Ok(true)` allows.
    pub fn condition(&self, e: &Expr, env: &Env<'_>) -> EResult<bool> {
        match self.eval(e, env)? {
            RVal::Bool(b) => Ok(b),
            other => fail(
                e.pos,
                format!("condition is a {}, not a bool", other.type_name()),
            ),
        }
    }

    /// Evaluates one expression. Nesting is bounded across function calls
    /// by [`MAX_EVAL_DEPTH`], so the stack a hostile file can use is bounded
    /// too; the big `match` lives in [`Self::eval_kind`] and its larger arms
    /// in helpers, to keep each recursion frame small.
    pub fn eval(&self, e: &Expr, env: &Env<'_>) -> EResult<RVal> {
        self.charge(1, e.pos)?;
        let depth = self.depth.get() + 1;
        if depth > MAX_EVAL_DEPTH {
            return fail(
                e.pos,
                format!("expressions and calls nested deeper than {MAX_EVAL_DEPTH} levels"),
            );
        }
        self.depth.set(depth);
        let result = self.eval_kind(e, env);
        self.depth.set(depth - 1);
        result
    }

    #[inline(never)]
    fn eval_kind(&self, e: &Expr, env: &Env<'_>) -> EResult<RVal> {
        let pos = e.pos;
        match &e.kind {
            ExprKind::Null => Ok(RVal::Null),
            ExprKind::Bool(b) => Ok(RVal::Bool(*b)),
            ExprKind::Int(i) => Ok(RVal::Int(*i)),
            ExprKind::Float(f) => Ok(RVal::Float(*f)),
            ExprKind::Str(s) => Ok(RVal::str(s)),
            ExprKind::List(items) => self.eval_list(items, env),
            ExprKind::Map(entries) => self.eval_map(entries, env),
            ExprKind::Ident(name) => self.variable(name, env, pos),
            ExprKind::Member(target, name) => {
                let t = self.eval(target, env)?;
                member(&t, name, pos)
            }
            ExprKind::Index(target, index) => {
                let t = self.eval(target, env)?;
                let i = self.eval(index, env)?;
                index_value(&t, &i, pos)
            }
            ExprKind::Slice(target, from, to) => self.eval_slice(target, from, to, env, pos),
            ExprKind::Call(name, args) => self.call(name, args, env, pos),
            ExprKind::Method(target, name, args) => self.eval_method(target, name, args, env, pos),
            ExprKind::Unary(op, inner) => self.eval_unary(*op, inner, env, pos),
            ExprKind::Binary(BinOp::And, l, r) => self.eval_and(l, r, env),
            ExprKind::Binary(BinOp::Or, l, r) => self.eval_or(l, r, env),
            ExprKind::Binary(op, l, r) => {
                let a = self.eval(l, env)?;
                let b = self.eval(r, env)?;
                self.binary(*op, &a, &b, pos)
            }
            ExprKind::Ternary(c, a, b) => {
                if self.condition(c, env)? {
                    self.eval(a, env)
                } else {
                    self.eval(b, env)
                }
            }
            ExprKind::Is(inner, ty) => {
                let v = self.eval(inner, env)?;
                Ok(RVal::Bool(is_type(&v, *ty, pos)?))
            }
            ExprKind::Path(parts) => self.eval_path(parts, env),
        }
    }

    #[inline(never)]
    fn eval_list(&self, items: &[Expr], env: &Env<'_>) -> EResult<RVal> {
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            out.push(self.eval(item, env)?);
        }
        Ok(RVal::List(Rc::new(out)))
    }

    #[inline(never)]
    fn eval_map(&self, entries: &[(String, Expr)], env: &Env<'_>) -> EResult<RVal> {
        let mut out = RMap::new();
        for (k, v) in entries {
            out.insert(k.clone(), self.eval(v, env)?);
        }
        Ok(RVal::map(out))
    }

    #[inline(never)]
    fn eval_slice(
        &self,
        target: &Expr,
        from: &Expr,
        to: &Expr,
        env: &Env<'_>,
        pos: Pos,
    ) -> EResult<RVal> {
        let t = self.eval(target, env)?;
        let from = self.eval(from, env)?;
        let to = self.eval(to, env)?;
        match (&t, &from, &to) {
            (RVal::List(items), RVal::Int(a), RVal::Int(b)) => {
                let (a, b) = (usize::try_from(*a), usize::try_from(*b));
                match (a, b) {
                    (Ok(a), Ok(b)) if a <= b && b <= items.len() => {
                        self.charge((b - a) as u64, pos)?;
                        Ok(RVal::List(Rc::new(items[a..b].to_vec())))
                    }
                    _ => fail(pos, "slice bounds out of range"),
                }
            }
            (RVal::Unknown, _, _) => fail(pos, "value is not known yet"),
            _ => fail(
                pos,
                format!(
                    "cannot slice {} with {} and {}",
                    t.type_name(),
                    from.type_name(),
                    to.type_name()
                ),
            ),
        }
    }

    #[inline(never)]
    fn eval_method(
        &self,
        target: &Expr,
        name: &str,
        args: &[Expr],
        env: &Env<'_>,
        pos: Pos,
    ) -> EResult<RVal> {
        if let ExprKind::Ident(ns) = &target.kind {
            if NAMESPACES.contains(&ns.as_str()) && !is_bound(ns, env) {
                let vals = self.eval_args(args, env)?;
                return self.namespaced(ns, name, &vals, pos);
            }
        }
        let t = self.eval(target, env)?;
        let vals = self.eval_args(args, env)?;
        self.method(&t, name, &vals, pos)
    }

    #[inline(never)]
    fn eval_unary(&self, op: UnOp, inner: &Expr, env: &Env<'_>, pos: Pos) -> EResult<RVal> {
        let v = self.eval(inner, env)?;
        match (op, v) {
            (UnOp::Not, RVal::Bool(b)) => Ok(RVal::Bool(!b)),
            (UnOp::Neg, RVal::Int(i)) => match i.checked_neg() {
                Some(n) => Ok(RVal::Int(n)),
                None => fail(pos, "integer overflow"),
            },
            (UnOp::Neg, RVal::Float(f)) => Ok(RVal::Float(-f)),
            (UnOp::Neg, RVal::Duration(d)) => match d.checked_neg() {
                Some(n) => Ok(RVal::Duration(n)),
                None => fail(pos, "duration overflow"),
            },
            (UnOp::Not, v) => fail(pos, format!("'!' needs a bool, got {}", v.type_name())),
            (UnOp::Neg, v) => fail(pos, format!("'-' needs a number, got {}", v.type_name())),
        }
    }

    /// `l && r`: false if either side is false, even if the other is an error.
    #[inline(never)]
    fn eval_and(&self, l: &Expr, r: &Expr, env: &Env<'_>) -> EResult<RVal> {
        match self.eval(l, env).and_then(|v| as_bool(v, l.pos)) {
            Ok(false) => Ok(RVal::Bool(false)),
            Ok(true) => Ok(RVal::Bool(self.condition(r, env)?)),
            Err(err) => match self.condition(r, env) {
                Ok(false) => Ok(RVal::Bool(false)),
                _ => Err(err),
            },
        }
    }

    /// `l || r`: true if either side is true, even if the other is an error.
    #[inline(never)]
    fn eval_or(&self, l: &Expr, r: &Expr, env: &Env<'_>) -> EResult<RVal> {
        match self.eval(l, env).and_then(|v| as_bool(v, l.pos)) {
            Ok(true) => Ok(RVal::Bool(true)),
            Ok(false) => Ok(RVal::Bool(self.condition(r, env)?)),
            Err(err) => match self.condition(r, env) {
                Ok(true) => Ok(RVal::Bool(true)),
                _ => Err(err),
            },
        }
    }

    #[inline(never)]
    fn eval_path(&self, parts: &[PathPart], env: &Env<'_>) -> EResult<RVal> {
        let mut segments = Vec::new();
        for part in parts {
            match part {
                PathPart::Lit(s) => segments.push(s.clone()),
                PathPart::Interp(e) => match self.eval(e, env)? {
                    RVal::Path(p) => segments.extend(p.iter().cloned()),
                    RVal::Unknown => return fail(e.pos, "value is not known yet"),
                    other => {
                        // A string is one segment: a client-controlled value
                        // must not be able to add segments and point get()
                        // at another document.
                        let text = to_string(&other, e.pos)?;
                        if text.is_empty() || text.contains('/') {
                            return fail(
                                e.pos,
                                "an interpolated path segment is empty or contains '/'",
                            );
                        }
                        segments.push(text);
                    }
                },
            }
        }
        Ok(RVal::Path(Rc::new(normalize_path(segments))))
    }

    fn eval_args(&self, args: &[Expr], env: &Env<'_>) -> EResult<Vec<RVal>> {
        args.iter().map(|a| self.eval(a, env)).collect()
    }

    fn variable(&self, name: &str, env: &Env<'_>, pos: Pos) -> EResult<RVal> {
        if let Some((_, v)) = env.locals.iter().rev().find(|(n, _)| n == name) {
            return Ok(v.clone());
        }
        if let Some((_, v)) = env.vars.iter().rev().find(|(n, _)| n == name) {
            return Ok(v.clone());
        }
        match name {
            "request" => Ok(self.request.clone()),
            "resource" => Ok(self.resource.clone()),
            "database" => Ok(RVal::str("(default)")),
            _ => fail(pos, format!("unknown variable {name}")),
        }
    }

    fn find_function<'f>(&self, name: &str, env: &'f Env<'_>) -> Option<&'f Arc<FunctionDef>> {
        env.funcs.iter().rev().find_map(|scope| scope.get(name))
    }

    fn call(&self, name: &str, args: &[Expr], env: &Env<'_>, pos: Pos) -> EResult<RVal> {
        if let Some(f) = self.find_function(name, env) {
            let f = Arc::clone(f);
            if f.params.len() != args.len() {
                return fail(
                    pos,
                    format!(
                        "function {name} takes {} arguments, got {}",
                        f.params.len(),
                        args.len()
                    ),
                );
            }
            let vals = self.eval_args(args, env)?;
            let key = Arc::as_ptr(&f) as usize;
            {
                let mut stack = self.stack.borrow_mut();
                if stack.contains(&key) {
                    return fail(
                        pos,
                        format!("function {name} calls itself; recursion is not allowed"),
                    );
                }
                if stack.len() >= MAX_CALL_DEPTH {
                    return fail(
                        pos,
                        format!("function calls nested deeper than {MAX_CALL_DEPTH}"),
                    );
                }
                stack.push(key);
            }
            let mut inner = Env {
                locals: f.params.iter().cloned().zip(vals).collect(),
                vars: env.vars,
                funcs: env.funcs,
            };
            let result = (|| {
                for (var, e) in &f.lets {
                    let v = self.eval(e, &inner)?;
                    inner.locals.push((var.clone(), v));
                }
                self.eval(&f.body, &inner)
            })();
            self.stack.borrow_mut().pop();
            return result;
        }
        let vals = self.eval_args(args, env)?;
        self.builtin(name, &vals, pos)
    }

    fn builtin(&self, name: &str, args: &[RVal], pos: Pos) -> EResult<RVal> {
        match (name, args) {
            ("get", [p]) => self.get_doc(p, false, pos),
            ("exists", [p]) => Ok(RVal::Bool(!matches!(
                self.get_doc(p, false, pos)?,
                RVal::Null
            ))),
            ("getAfter", [p]) => self.get_doc(p, true, pos),
            ("existsAfter", [p]) => Ok(RVal::Bool(!matches!(
                self.get_doc(p, true, pos)?,
                RVal::Null
            ))),
            ("int", [v]) => match v {
                RVal::Int(i) => Ok(RVal::Int(*i)),
                RVal::Float(f) if f.is_finite() && *f >= -9.2e18 && *f <= 9.2e18 => {
                    Ok(RVal::Int(f.trunc() as i64))
                }
                RVal::Str(s) => s
                    .trim()
                    .parse::<i64>()
                    .map(RVal::Int)
                    .or_else(|_| fail(pos, "this string is not an int")),
                RVal::Bool(b) => Ok(RVal::Int(*b as i64)),
                RVal::Timestamp(t) => Ok(RVal::Int(t.seconds())),
                other => fail(pos, format!("cannot convert {} to int", other.type_name())),
            },
            ("float", [v]) => match v {
                RVal::Int(i) => Ok(RVal::Float(*i as f64)),
                RVal::Float(f) => Ok(RVal::Float(*f)),
                RVal::Str(s) => s
                    .trim()
                    .parse::<f64>()
                    .map(RVal::Float)
                    .or_else(|_| fail(pos, "this string is not a float")),
                other => fail(
                    pos,
                    format!("cannot convert {} to float", other.type_name()),
                ),
            },
            ("string", [v]) => Ok(RVal::str(&to_string(v, pos)?)),
            ("bool", [v]) => match v {
                RVal::Bool(b) => Ok(RVal::Bool(*b)),
                RVal::Str(s) if &**s == "true" => Ok(RVal::Bool(true)),
                RVal::Str(s) if &**s == "false" => Ok(RVal::Bool(false)),
                other => fail(pos, format!("cannot convert {} to bool", other.type_name())),
            },
            ("path", [RVal::Str(s)]) => Ok(RVal::Path(Rc::new(normalize_path(
                s.split('/')
                    .filter(|x| !x.is_empty())
                    .map(String::from)
                    .collect(),
            )))),
            ("debug", [v]) => {
                tracing::debug!(value = ?v, "rules debug()");
                Ok(v.clone())
            }
            ("size", [v]) => self.method(v, "size", &[], pos),
            (
                "get" | "exists" | "getAfter" | "existsAfter" | "int" | "float" | "string" | "bool"
                | "path" | "debug" | "size",
                _,
            ) => fail(pos, format!("wrong arguments for {name}()")),
            _ => fail(pos, format!("unknown function {name}")),
        }
    }

    /// `get()`/`exists()` and their `After` forms: the `resource` shape of
    /// the document at `p`, or null when it does not exist.
    fn get_doc(&self, p: &RVal, after: bool, pos: Pos) -> EResult<RVal> {
        let segments = match p {
            RVal::Path(s) => s.as_ref().clone(),
            RVal::Str(s) => normalize_path(
                s.split('/')
                    .filter(|x| !x.is_empty())
                    .map(String::from)
                    .collect(),
            ),
            RVal::Unknown => return fail(pos, "value is not known yet"),
            other => {
                return fail(
                    pos,
                    format!("get() needs a path, got {}", other.type_name()),
                )
            }
        };
        if after && self.own_path.as_ref() == Some(&segments) {
            if let Some(v) = &self.own_after {
                return Ok(v.clone());
            }
        }
        if let Some(v) = self.doc_cache.borrow().get(&segments) {
            return Ok(v.clone());
        }
        let n = self.lookups.get() + 1;
        if n > MAX_DOC_LOOKUPS {
            return fail(
                pos,
                format!("more than {MAX_DOC_LOOKUPS} get()/exists() calls in one evaluation"),
            );
        }
        self.lookups.set(n);
        let doc_path = match DocPath::parse(&segments.join("/")) {
            Ok(d) => d,
            Err(e) => return fail(pos, format!("get() needs a document path: {e}")),
        };
        // System documents are never visible to rules: get() of one is null.
        let v = if doc_path.is_system() {
            RVal::Null
        } else {
            match self.lookup.get(&doc_path) {
                Some(doc) => document_value(&doc),
                None => RVal::Null,
            }
        };
        self.doc_cache.borrow_mut().insert(segments, v.clone());
        Ok(v)
    }

    fn regex(&self, pattern: &str, pos: Pos) -> EResult<Arc<regex::Regex>> {
        if pattern.len() > MAX_REGEX_BYTES {
            return fail(
                pos,
                format!("regular expression longer than {MAX_REGEX_BYTES} bytes"),
            );
        }
        // Charged whether or not the cache has it, so that a decision never
        // depends on what other requests compiled before.
        self.charge(pattern.len() as u64 * 10, pos)?;
        self.regexes
            .get_or_compile(pattern)
            .or_else(|e| fail(pos, format!("invalid regular expression: {e}")))
    }

    fn binary(&self, op: BinOp, a: &RVal, b: &RVal, pos: Pos) -> EResult<RVal> {
        use RVal::*;
        let bad = || {
            fail(
                pos,
                format!(
                    "'{}' cannot combine {} and {}",
                    op.as_str(),
                    a.type_name(),
                    b.type_name()
                ),
            )
        };
        match op {
            BinOp::Eq => Ok(Bool(self.eq(a, b, pos)?)),
            BinOp::Ne => Ok(Bool(!self.eq(a, b, pos)?)),
            BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => {
                let ord = compare(a, b, pos)?;
                let Some(ord) = ord else {
                    return Ok(Bool(false));
                };
                Ok(Bool(match op {
                    BinOp::Lt => ord == Ordering::Less,
                    BinOp::Le => ord != Ordering::Greater,
                    BinOp::Gt => ord == Ordering::Greater,
                    _ => ord != Ordering::Less,
                }))
            }
            BinOp::In => match b {
                List(items) | Set(items) => {
                    self.charge(items.len() as u64, pos)?;
                    for item in items.iter() {
                        if self.eq(a, item, pos)? {
                            return Ok(Bool(true));
                        }
                    }
                    Ok(Bool(false))
                }
                Map(m) => match a {
                    Str(k) => Ok(Bool(m.contains_key(&**k))),
                    Unknown => fail(pos, "value is not known yet"),
                    _ => Ok(Bool(false)),
                },
                Unknown => fail(pos, "value is not known yet"),
                _ => fail(
                    pos,
                    format!(
                        "'in' needs a list, set or map on the right, got {}",
                        b.type_name()
                    ),
                ),
            },
            BinOp::Add => match (a, b) {
                (Int(x), Int(y)) => x
                    .checked_add(*y)
                    .map(Int)
                    .map_or_else(|| fail(pos, "integer overflow"), Ok),
                (Int(_) | Float(_), Int(_) | Float(_)) => Ok(Float(num(a) + num(b))),
                (Str(x), Str(y)) => {
                    self.charge((x.len() + y.len()) as u64 / 16, pos)?;
                    Ok(RVal::str(&format!("{x}{y}")))
                }
                (List(x), List(y)) => {
                    self.charge((x.len() + y.len()) as u64, pos)?;
                    Ok(List(Rc::new(x.iter().chain(y.iter()).cloned().collect())))
                }
                (Timestamp(t), Duration(d)) | (Duration(d), Timestamp(t)) => {
                    t.0.checked_add(*d)
                        .map(|n| Timestamp(hearth_protocol::Timestamp(n)))
                        .map_or_else(|| fail(pos, "timestamp overflow"), Ok)
                }
                (Duration(x), Duration(y)) => x
                    .checked_add(*y)
                    .map(Duration)
                    .map_or_else(|| fail(pos, "duration overflow"), Ok),
                _ => bad(),
            },
            BinOp::Sub => match (a, b) {
                (Int(x), Int(y)) => x
                    .checked_sub(*y)
                    .map(Int)
                    .map_or_else(|| fail(pos, "integer overflow"), Ok),
                (Int(_) | Float(_), Int(_) | Float(_)) => Ok(Float(num(a) - num(b))),
                (Timestamp(t), Duration(d)) => {
                    t.0.checked_sub(*d)
                        .map(|n| Timestamp(hearth_protocol::Timestamp(n)))
                        .map_or_else(|| fail(pos, "timestamp overflow"), Ok)
                }
                (Timestamp(x), Timestamp(y)) => {
                    x.0.checked_sub(y.0)
                        .map(Duration)
                        .map_or_else(|| fail(pos, "duration overflow"), Ok)
                }
                (Duration(x), Duration(y)) => x
                    .checked_sub(*y)
                    .map(Duration)
                    .map_or_else(|| fail(pos, "duration overflow"), Ok),
                _ => bad(),
            },
            BinOp::Mul => match (a, b) {
                (Int(x), Int(y)) => x
                    .checked_mul(*y)
                    .map(Int)
                    .map_or_else(|| fail(pos, "integer overflow"), Ok),
                (Int(_) | Float(_), Int(_) | Float(_)) => Ok(Float(num(a) * num(b))),
                (Duration(d), Int(n)) | (Int(n), Duration(d)) => d
                    .checked_mul(*n)
                    .map(Duration)
                    .map_or_else(|| fail(pos, "duration overflow"), Ok),
                _ => bad(),
            },
            BinOp::Div => match (a, b) {
                (Int(_), Int(0)) => fail(pos, "division by zero"),
                (Int(x), Int(y)) => x
                    .checked_div(*y)
                    .map(Int)
                    .map_or_else(|| fail(pos, "integer overflow"), Ok),
                (Int(_) | Float(_), Int(_) | Float(_)) => Ok(Float(num(a) / num(b))),
                (Duration(_), Int(0)) => fail(pos, "division by zero"),
                (Duration(d), Int(n)) => d
                    .checked_div(*n)
                    .map(Duration)
                    .map_or_else(|| fail(pos, "duration overflow"), Ok),
                _ => bad(),
            },
            BinOp::Rem => match (a, b) {
                (Int(_), Int(0)) => fail(pos, "modulo by zero"),
                (Int(x), Int(y)) => x
                    .checked_rem(*y)
                    .map(Int)
                    .map_or_else(|| fail(pos, "integer overflow"), Ok),
                (Int(_) | Float(_), Int(_) | Float(_)) => Ok(Float(num(a) % num(b))),
                _ => bad(),
            },
            BinOp::And | BinOp::Or => unreachable!("short-circuit operators are evaluated in eval"),
        }
    }

    /// Equality as the rules language defines it; errors only on unknown values.
    pub fn eq(&self, a: &RVal, b: &RVal, pos: Pos) -> EResult<bool> {
        use RVal::*;
        Ok(match (a, b) {
            (Unknown, _) | (_, Unknown) => return fail(pos, "value is not known yet"),
            (Null, Null) => true,
            (Bool(x), Bool(y)) => x == y,
            (Int(x), Int(y)) => x == y,
            (Int(_) | Float(_), Int(_) | Float(_)) => num(a) == num(b),
            (Str(x), Str(y)) => x == y,
            (Bytes(x), Bytes(y)) => x == y,
            (Timestamp(x), Timestamp(y)) => x == y,
            (Duration(x), Duration(y)) => x == y,
            (Path(x), Path(y)) => x == y,
            (List(x), List(y)) => {
                if x.len() != y.len() {
                    return Ok(false);
                }
                self.charge(x.len() as u64, pos)?;
                for (p, q) in x.iter().zip(y.iter()) {
                    if !self.eq(p, q, pos)? {
                        return Ok(false);
                    }
                }
                true
            }
            (Map(x), Map(y)) => {
                if x.len() != y.len() {
                    return Ok(false);
                }
                self.charge(x.len() as u64, pos)?;
                for ((k1, v1), (k2, v2)) in x.iter().zip(y.iter()) {
                    if k1 != k2 || !self.eq(v1, v2, pos)? {
                        return Ok(false);
                    }
                }
                true
            }
            (Set(x), Set(y)) => x.len() == y.len() && self.all_in(x, y, pos)?,
            _ => false,
        })
    }

    fn contains(&self, items: &[RVal], v: &RVal, pos: Pos) -> EResult<bool> {
        for item in items {
            if self.eq(item, v, pos)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn all_in(&self, needles: &[RVal], hay: &[RVal], pos: Pos) -> EResult<bool> {
        self.charge((needles.len() as u64).saturating_mul(hay.len() as u64), pos)?;
        for n in needles {
            if !self.contains(hay, n, pos)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn any_in(&self, needles: &[RVal], hay: &[RVal], pos: Pos) -> EResult<bool> {
        self.charge((needles.len() as u64).saturating_mul(hay.len() as u64), pos)?;
        for n in needles {
            if self.contains(hay, n, pos)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn to_set(&self, items: &[RVal], pos: Pos) -> EResult<Vec<RVal>> {
        self.charge(
            (items.len() as u64).saturating_mul(items.len() as u64) / 2 + 1,
            pos,
        )?;
        let mut out: Vec<RVal> = Vec::with_capacity(items.len());
        for item in items {
            if !self.contains(&out, item, pos)? {
                out.push(item.clone());
            }
        }
        Ok(out)
    }

    fn namespaced(&self, ns: &str, name: &str, args: &[RVal], pos: Pos) -> EResult<RVal> {
        use RVal::*;
        match (ns, name, args) {
            ("math", "abs", [Int(i)]) => i
                .checked_abs()
                .map(Int)
                .map_or_else(|| fail(pos, "integer overflow"), Ok),
            ("math", "abs", [Float(f)]) => Ok(Float(f.abs())),
            ("math", "ceil", [v @ (Int(_) | Float(_))]) => Ok(Float(num(v).ceil())),
            ("math", "floor", [v @ (Int(_) | Float(_))]) => Ok(Float(num(v).floor())),
            ("math", "round", [v @ (Int(_) | Float(_))]) => Ok(Float(num(v).round())),
            ("math", "sqrt", [v @ (Int(_) | Float(_))]) => Ok(Float(num(v).sqrt())),
            ("math", "pow", [a @ (Int(_) | Float(_)), b @ (Int(_) | Float(_))]) => {
                Ok(Float(num(a).powf(num(b))))
            }
            ("math", "isNaN", [v @ (Int(_) | Float(_))]) => Ok(Bool(num(v).is_nan())),
            ("math", "isInfinite", [v @ (Int(_) | Float(_))]) => Ok(Bool(num(v).is_infinite())),
            ("duration", "value", [Int(n), Str(unit)]) => {
                let scale: i64 = match &**unit {
                    "w" => 7 * 86_400_000_000_000,
                    "d" => 86_400_000_000_000,
                    "h" => 3_600_000_000_000,
                    "m" => 60_000_000_000,
                    "s" => 1_000_000_000,
                    "ms" => 1_000_000,
                    "ns" => 1,
                    _ => return fail(pos, "unknown duration unit; use w, d, h, m, s, ms or ns"),
                };
                n.checked_mul(scale)
                    .map(Duration)
                    .map_or_else(|| fail(pos, "duration overflow"), Ok)
            }
            ("duration", "time", [Int(h), Int(m), Int(s), Int(ns)]) => h
                .checked_mul(3_600_000_000_000)
                .and_then(|x| x.checked_add(m.checked_mul(60_000_000_000)?))
                .and_then(|x| x.checked_add(s.checked_mul(1_000_000_000)?))
                .and_then(|x| x.checked_add(*ns))
                .map(Duration)
                .map_or_else(|| fail(pos, "duration overflow"), Ok),
            ("timestamp", "date", [Int(y), Int(m), Int(d)])
                if (1..=12).contains(m) && (1..=31).contains(d) && (1678..=2261).contains(y) =>
            {
                Ok(Timestamp(hearth_protocol::Timestamp(
                    days_from_civil(*y, *m, *d) * 86_400_000_000_000,
                )))
            }
            ("timestamp", "value", [Int(ms)]) => {
                Ok(Timestamp(hearth_protocol::Timestamp::from_millis(*ms)))
            }
            _ => fail(
                pos,
                format!("unknown function {ns}.{name} for these arguments"),
            ),
        }
    }

    fn method(&self, t: &RVal, name: &str, args: &[RVal], pos: Pos) -> EResult<RVal> {
        use RVal::*;
        let wrong = || {
            fail(
                pos,
                format!(
                    "{} has no method {name} taking {} argument(s)",
                    t.type_name(),
                    args.len()
                ),
            )
        };
        match t {
            Unknown => fail(pos, "value is not known yet"),
            Str(s) => match (name, args) {
                ("size", []) => Ok(Int(s.chars().count() as i64)),
                ("lower", []) => Ok(RVal::str(&s.to_lowercase())),
                ("upper", []) => Ok(RVal::str(&s.to_uppercase())),
                ("trim", []) => Ok(RVal::str(s.trim())),
                ("matches", [Str(re)]) => {
                    // Validate the pattern alone first, so that an unbalanced
                    // pattern cannot escape the anchoring group below.
                    self.regex(re, pos)?;
                    let full = format!("^(?:{re})$");
                    let r = self.regex(&full, pos)?;
                    self.charge(s.len() as u64 / 8, pos)?;
                    Ok(Bool(r.is_match(s)))
                }
                ("split", [Str(re)]) => {
                    let r = self.regex(re, pos)?;
                    self.charge(s.len() as u64 / 4, pos)?;
                    Ok(List(Rc::new(r.split(s).map(RVal::str).collect())))
                }
                ("replace", [Str(re), Str(sub)]) => {
                    let r = self.regex(re, pos)?;
                    // Charge the largest possible output up front: an empty
                    // pattern matches between every two characters.
                    let worst = (s.len() as u64 + 1).saturating_mul(sub.len() as u64 + 1);
                    self.charge(worst / 16 + s.len() as u64 / 4, pos)?;
                    Ok(RVal::str(&r.replace_all(s, &**sub)))
                }
                ("toUtf8", []) => Ok(Bytes(Rc::new(s.as_bytes().to_vec()))),
                _ => wrong(),
            },
            Bytes(b) => match (name, args) {
                ("size", []) => Ok(Int(b.len() as i64)),
                _ => wrong(),
            },
            List(items) => match (name, args) {
                ("size", []) => Ok(Int(items.len() as i64)),
                ("hasAny", [other]) => Ok(Bool(self.any_in(elements(other, pos)?, items, pos)?)),
                ("hasAll", [other]) => Ok(Bool(self.all_in(elements(other, pos)?, items, pos)?)),
                ("hasOnly", [other]) => Ok(Bool(self.all_in(items, elements(other, pos)?, pos)?)),
                ("join", [Str(sep)]) => {
                    let worst = (items.len() as u64).saturating_mul(sep.len() as u64 + 1);
                    self.charge(items.len() as u64 + worst / 16, pos)?;
                    let mut parts = Vec::with_capacity(items.len());
                    for item in items.iter() {
                        match item {
                            Str(s) => parts.push(s.to_string()),
                            other => {
                                return fail(
                                    pos,
                                    format!(
                                        "join() needs a list of strings, found {}",
                                        other.type_name()
                                    ),
                                )
                            }
                        }
                    }
                    Ok(RVal::str(&parts.join(sep)))
                }
                ("concat", [List(other)]) => {
                    self.charge((items.len() + other.len()) as u64, pos)?;
                    Ok(List(Rc::new(
                        items.iter().chain(other.iter()).cloned().collect(),
                    )))
                }
                ("removeAll", [other]) => {
                    let other = elements(other, pos)?;
                    self.charge((items.len() as u64).saturating_mul(other.len() as u64), pos)?;
                    let mut out = Vec::new();
                    for item in items.iter() {
                        if !self.contains(other, item, pos)? {
                            out.push(item.clone());
                        }
                    }
                    Ok(List(Rc::new(out)))
                }
                ("toSet", []) => Ok(Set(Rc::new(self.to_set(items, pos)?))),
                _ => wrong(),
            },
            Set(items) => match (name, args) {
                ("size", []) => Ok(Int(items.len() as i64)),
                ("hasAny", [other]) => Ok(Bool(self.any_in(elements(other, pos)?, items, pos)?)),
                ("hasAll", [other]) => Ok(Bool(self.all_in(elements(other, pos)?, items, pos)?)),
                ("hasOnly", [other]) => Ok(Bool(self.all_in(items, elements(other, pos)?, pos)?)),
                ("difference", [other]) => {
                    let other = elements(other, pos)?;
                    self.charge((items.len() as u64).saturating_mul(other.len() as u64), pos)?;
                    let mut out = Vec::new();
                    for item in items.iter() {
                        if !self.contains(other, item, pos)? {
                            out.push(item.clone());
                        }
                    }
                    Ok(Set(Rc::new(out)))
                }
                ("intersection", [other]) => {
                    let other = elements(other, pos)?;
                    self.charge((items.len() as u64).saturating_mul(other.len() as u64), pos)?;
                    let mut out = Vec::new();
                    for item in items.iter() {
                        if self.contains(other, item, pos)? {
                            out.push(item.clone());
                        }
                    }
                    Ok(Set(Rc::new(out)))
                }
                ("union", [other]) => {
                    let other = elements(other, pos)?;
                    let all: Vec<RVal> = items.iter().chain(other.iter()).cloned().collect();
                    Ok(Set(Rc::new(self.to_set(&all, pos)?)))
                }
                _ => wrong(),
            },
            Map(m) => match (name, args) {
                ("size", []) => Ok(Int(m.len() as i64)),
                ("keys", []) => {
                    self.charge(m.len() as u64, pos)?;
                    Ok(List(Rc::new(m.keys().map(|k| RVal::str(k)).collect())))
                }
                ("values", []) => {
                    self.charge(m.len() as u64, pos)?;
                    Ok(List(Rc::new(m.values().cloned().collect())))
                }
                ("get", [key, default]) => {
                    let keys: Vec<&str> = match key {
                        Str(k) => vec![&**k],
                        List(ks) => {
                            let mut out = Vec::new();
                            for k in ks.iter() {
                                match k {
                                    Str(k) => out.push(&**k),
                                    other => {
                                        return fail(
                                            pos,
                                            format!(
                                                "map.get() key path must hold strings, found {}",
                                                other.type_name()
                                            ),
                                        )
                                    }
                                }
                            }
                            out
                        }
                        other => {
                            return fail(
                                pos,
                                format!(
                                    "map.get() needs a string or list key, got {}",
                                    other.type_name()
                                ),
                            )
                        }
                    };
                    let mut current: &RVal = t;
                    for k in keys {
                        match current {
                            Map(inner) => match inner.get(k) {
                                Some(v) => current = v,
                                None => return Ok(default.clone()),
                            },
                            _ => return Ok(default.clone()),
                        }
                    }
                    Ok(current.clone())
                }
                ("diff", [Map(other)]) => Ok(Diff(Rc::new((Rc::clone(m), Rc::clone(other))))),
                _ => wrong(),
            },
            Diff(d) => {
                let (new, old) = (&d.0, &d.1);
                self.charge((new.len() + old.len()) as u64, pos)?;
                let mut out = Vec::new();
                let added = |out: &mut Vec<RVal>| {
                    for k in new.keys().filter(|k| !old.contains_key(*k)) {
                        out.push(RVal::str(k));
                    }
                };
                let removed = |out: &mut Vec<RVal>| {
                    for k in old.keys().filter(|k| !new.contains_key(*k)) {
                        out.push(RVal::str(k));
                    }
                };
                let both = |out: &mut Vec<RVal>, changed: bool| -> EResult<()> {
                    for (k, v) in new.iter() {
                        if let Some(o) = old.get(k) {
                            if self.eq(v, o, pos)? != changed {
                                out.push(RVal::str(k));
                            }
                        }
                    }
                    Ok(())
                };
                match (name, args) {
                    ("addedKeys", []) => added(&mut out),
                    ("removedKeys", []) => removed(&mut out),
                    ("changedKeys", []) => both(&mut out, true)?,
                    ("unchangedKeys", []) => both(&mut out, false)?,
                    ("affectedKeys", []) => {
                        added(&mut out);
                        removed(&mut out);
                        both(&mut out, true)?;
                    }
                    _ => return wrong(),
                }
                Ok(Set(Rc::new(out)))
            }
            Timestamp(ts) => {
                let secs = ts.seconds();
                let days = secs.div_euclid(86_400);
                let of_day = secs.rem_euclid(86_400);
                let (y, m, d) = civil_from_days(days);
                match (name, args) {
                    ("toMillis", []) => Ok(Int(ts.millis())),
                    ("year", []) => Ok(Int(y)),
                    ("month", []) => Ok(Int(m)),
                    ("day", []) => Ok(Int(d)),
                    ("hours", []) => Ok(Int(of_day / 3600)),
                    ("minutes", []) => Ok(Int(of_day % 3600 / 60)),
                    ("seconds", []) => Ok(Int(of_day % 60)),
                    ("nanos", []) => Ok(Int(ts.0.rem_euclid(1_000_000_000))),
                    // ISO: Monday is 1; 1970-01-01 was a Thursday.
                    ("dayOfWeek", []) => Ok(Int((days + 3).rem_euclid(7) + 1)),
                    ("dayOfYear", []) => Ok(Int(days - days_from_civil(y, 1, 1) + 1)),
                    ("date", []) => Ok(Timestamp(hearth_protocol::Timestamp(
                        days.saturating_mul(86_400_000_000_000),
                    ))),
                    ("time", []) => Ok(Duration(ts.0 - days.saturating_mul(86_400_000_000_000))),
                    _ => wrong(),
                }
            }
            Duration(d) => match (name, args) {
                ("seconds", []) => Ok(Int(d.div_euclid(1_000_000_000))),
                ("nanos", []) => Ok(Int(d.rem_euclid(1_000_000_000))),
                _ => wrong(),
            },
            Path(p) => match (name, args) {
                ("size", []) => Ok(Int(p.len() as i64)),
                _ => wrong(),
            },
            _ => wrong(),
        }
    }
}

/// (year, month, day) of a day count since 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Days since 1970-01-01 of a civil date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn is_bound(name: &str, env: &Env<'_>) -> bool {
    env.locals.iter().any(|(n, _)| n == name) || env.vars.iter().any(|(n, _)| n == name)
}

fn as_bool(v: RVal, pos: Pos) -> EResult<bool> {
    match v {
        RVal::Bool(b) => Ok(b),
        other => fail(pos, format!("expected a bool, got {}", other.type_name())),
    }
}

fn num(v: &RVal) -> f64 {
    match v {
        RVal::Int(i) => *i as f64,
        RVal::Float(f) => *f,
        _ => f64::NAN,
    }
}

/// The elements of a list or set argument.
fn elements(v: &RVal, pos: Pos) -> EResult<&[RVal]> {
    match v {
        RVal::List(items) | RVal::Set(items) => Ok(items),
        other => fail(
            pos,
            format!("expected a list or set, got {}", other.type_name()),
        ),
    }
}

/// Removes the `databases/{db}/documents` prefix, so that full Firestore
/// paths and short paths compare equal.
pub(crate) fn normalize_path(mut segments: Vec<String>) -> Vec<String> {
    if segments.len() >= 3 && segments[0] == "databases" && segments[2] == "documents" {
        segments.drain(..3);
    }
    segments
}

fn member(t: &RVal, name: &str, pos: Pos) -> EResult<RVal> {
    match t {
        RVal::Map(m) => match m.get(name) {
            Some(v) => Ok(v.clone()),
            None => fail(pos, format!("map has no field {name:?}")),
        },
        RVal::Unknown => fail(pos, "value is not known yet"),
        other => fail(
            pos,
            format!("{} value has no field {name:?}", other.type_name()),
        ),
    }
}

fn index_value(t: &RVal, i: &RVal, pos: Pos) -> EResult<RVal> {
    match (t, i) {
        (RVal::List(items), RVal::Int(n)) => usize::try_from(*n)
            .ok()
            .and_then(|n| items.get(n))
            .cloned()
            .map_or_else(|| fail(pos, format!("index {n} out of range")), Ok),
        (RVal::Path(segs), RVal::Int(n)) => usize::try_from(*n)
            .ok()
            .and_then(|n| segs.get(n))
            .map(|s| RVal::str(s))
            .map_or_else(|| fail(pos, format!("index {n} out of range")), Ok),
        (RVal::Map(_), RVal::Str(k)) => member(t, k, pos),
        (RVal::Unknown, _) | (_, RVal::Unknown) => fail(pos, "value is not known yet"),
        _ => fail(
            pos,
            format!("cannot index {} with {}", t.type_name(), i.type_name()),
        ),
    }
}

/// Ordering for `< <= > >=`; `None` when NaN is involved (comparison is false).
fn compare(a: &RVal, b: &RVal, pos: Pos) -> EResult<Option<Ordering>> {
    use RVal::*;
    Ok(match (a, b) {
        (Int(x), Int(y)) => Some(x.cmp(y)),
        (Int(_) | Float(_), Int(_) | Float(_)) => num(a).partial_cmp(&num(b)),
        (Str(x), Str(y)) => Some(x.cmp(y)),
        (Timestamp(x), Timestamp(y)) => Some(x.cmp(y)),
        (Duration(x), Duration(y)) => Some(x.cmp(y)),
        (Bytes(x), Bytes(y)) => Some(x.cmp(y)),
        (Bool(x), Bool(y)) => Some(x.cmp(y)),
        _ => {
            return fail(
                pos,
                format!("cannot compare {} with {}", a.type_name(), b.type_name()),
            )
        }
    })
}

fn is_type(v: &RVal, ty: TypeName, pos: Pos) -> EResult<bool> {
    use RVal::*;
    Ok(match (v, ty) {
        (Unknown, _) => return fail(pos, "value is not known yet"),
        (Str(_), TypeName::String)
        | (Int(_), TypeName::Int | TypeName::Number)
        | (Float(_), TypeName::Float | TypeName::Number)
        | (Bool(_), TypeName::Bool)
        | (Null, TypeName::Null)
        | (List(_), TypeName::List)
        | (Map(_), TypeName::Map)
        | (Timestamp(_), TypeName::Timestamp)
        | (Duration(_), TypeName::Duration)
        | (Path(_), TypeName::Path)
        | (Bytes(_), TypeName::Bytes)
        | (Set(_), TypeName::Set) => true,
        _ => false,
    })
}

fn to_string(v: &RVal, pos: Pos) -> EResult<String> {
    use RVal::*;
    Ok(match v {
        Null => "null".into(),
        Bool(b) => b.to_string(),
        Int(i) => i.to_string(),
        Float(f) => {
            if f.is_finite() && f.fract() == 0.0 && f.abs() < 1e16 {
                format!("{f:.1}")
            } else {
                f.to_string()
            }
        }
        Str(s) => s.to_string(),
        Timestamp(t) => t.to_rfc3339(),
        Path(p) => format!("/databases/(default)/documents/{}", p.join("/")),
        Unknown => return fail(pos, "value is not known yet"),
        other => {
            return fail(
                pos,
                format!("cannot convert {} to string", other.type_name()),
            )
        }
    })
}
