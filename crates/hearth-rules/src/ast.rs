//! The syntax tree of a rules file, as the parser builds it and the
//! evaluator walks it.
//!
//! The tree is immutable after parsing and shared (behind an `Arc`) by every
//! evaluation, so it holds no runtime values: literals stay literals and the
//! evaluator converts them on use.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

/// A position in the rules source, 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: u32,
    pub column: u32,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// The concrete operations a rule can allow. `read` = get + list and
/// `write` = create + update + delete are spelled as unions of these bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    Get,
    List,
    Create,
    Update,
    Delete,
}

impl Method {
    pub(crate) fn bit(self) -> u8 {
        match self {
            Method::Get => 1,
            Method::List => 2,
            Method::Create => 4,
            Method::Update => 8,
            Method::Delete => 16,
        }
    }

    /// The name the rules language uses (`request.method`).
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "get",
            Method::List => "list",
            Method::Create => "create",
            Method::Update => "update",
            Method::Delete => "delete",
        }
    }

    /// Parses one of the five concrete method names.
    pub fn parse(text: &str) -> Option<Method> {
        Some(match text {
            "get" => Method::Get,
            "list" => Method::List,
            "create" => Method::Create,
            "update" => Method::Update,
            "delete" => Method::Delete,
            _ => return None,
        })
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One segment of a `match` path.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum MatchSeg {
    /// A literal collection or document id.
    Lit(String),
    /// `{name}`: exactly one segment, bound to `name` as a string.
    Var(String),
    /// `{name=**}`: zero or more trailing segments, bound as a path.
    Rest(String),
}

/// A `match` block (the root of a file is a block with an empty path).
#[derive(Debug, Clone)]
pub(crate) struct MatchBlock {
    pub path: Vec<MatchSeg>,
    /// Variables bound by the block itself without consuming segments: the
    /// `{database}` of the `/databases/{database}/documents` wrapper.
    pub fixed: Vec<(String, String)>,
    pub functions: HashMap<String, Arc<FunctionDef>>,
    pub allows: Vec<Allow>,
    pub children: Vec<MatchBlock>,
}

/// `allow m1, m2: if cond;` — `condition` is `None` for `allow read;`.
#[derive(Debug, Clone)]
pub(crate) struct Allow {
    pub methods: u8,
    pub condition: Option<Expr>,
}

/// `function name(params) { let x = e; ...; return e; }`
#[derive(Debug, Clone)]
pub(crate) struct FunctionDef {
    pub name: String,
    pub params: Vec<String>,
    pub lets: Vec<(String, Expr)>,
    pub body: Expr,
}

#[derive(Debug, Clone)]
pub(crate) struct Expr {
    pub kind: ExprKind,
    pub pos: Pos,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BinOp {
    Or,
    And,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    In,
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

impl BinOp {
    pub fn as_str(self) -> &'static str {
        match self {
            BinOp::Or => "||",
            BinOp::And => "&&",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::In => "in",
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Rem => "%",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UnOp {
    Not,
    Neg,
}

/// The type names accepted after `is`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TypeName {
    String,
    Int,
    Float,
    Number,
    Bool,
    Null,
    List,
    Map,
    Timestamp,
    Duration,
    Path,
    Bytes,
    Set,
}

impl TypeName {
    pub fn parse(text: &str) -> Option<TypeName> {
        Some(match text {
            "string" => TypeName::String,
            "int" => TypeName::Int,
            "float" => TypeName::Float,
            "number" => TypeName::Number,
            "bool" => TypeName::Bool,
            "null" => TypeName::Null,
            "list" => TypeName::List,
            "map" => TypeName::Map,
            "timestamp" => TypeName::Timestamp,
            "duration" => TypeName::Duration,
            "path" => TypeName::Path,
            "bytes" => TypeName::Bytes,
            "set" => TypeName::Set,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone)]
pub(crate) enum PathPart {
    Lit(String),
    /// `$(expr)`: the value's string form, split on `/`.
    Interp(Expr),
}

#[derive(Debug, Clone)]
pub(crate) enum ExprKind {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    List(Vec<Expr>),
    Map(Vec<(String, Expr)>),
    Ident(String),
    Member(Box<Expr>, String),
    Index(Box<Expr>, Box<Expr>),
    /// `list[from:to]`
    Slice(Box<Expr>, Box<Expr>, Box<Expr>),
    /// `name(args)`: a user function or a global builtin (`get`, `int`, ...).
    Call(String, Vec<Expr>),
    /// `target.name(args)`: a method, or a namespaced builtin (`math.abs`).
    Method(Box<Expr>, String, Vec<Expr>),
    Unary(UnOp, Box<Expr>),
    Binary(BinOp, Box<Expr>, Box<Expr>),
    Ternary(Box<Expr>, Box<Expr>, Box<Expr>),
    Is(Box<Expr>, TypeName),
    Path(Vec<PathPart>),
}
