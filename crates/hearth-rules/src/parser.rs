//! A hand-written recursive-descent parser for the rules language.
//!
//! The grammar follows Firestore Security Rules closely enough that a
//! Firebase project's `firestore.rules` parses unchanged:
//!
//! ```text
//! file      := ("rules_version" "=" STRING ";")? (service | item)*
//! service   := "service" NAME ("." NAME)* "{" item* "}"
//! item      := match | function | allow
//! match     := "match" MATCHPATH "{" item* "}"
//! allow     := "allow" METHOD ("," METHOD)* (":" "if" expr)? ";"
//! function  := "function" NAME "(" params ")" "{" ("let" NAME "=" expr ";")* "return" expr ";"? "}"
//! expr      := or ("?" expr ":" expr)?
//! or        := and ("||" and)*          and := rel ("&&" rel)*
//! rel       := add (("=="|"!="|"<"|"<="|">"|">="|"in") add | "is" TYPE)*
//! add       := mul (("+"|"-") mul)*      mul := unary (("*"|"/"|"%") unary)*
//! unary     := ("!"|"-") unary | postfix
//! postfix   := primary ("." NAME ("(" args ")")? | "[" expr (":" expr)? "]" | "(" args ")")*
//! primary   := literal | NAME | "(" expr ")" | "[" list "]" | "{" map "}" | PATH
//! ```
//!
//! Paths are scanned from the raw text because their segments are not
//! tokens: `match /rooms/{roomId}/messages/{rest=**}` and, in expressions,
//! `/databases/$(database)/documents/rooms/$(roomId)`. A path literal can
//! only start where an operand is expected, so it never clashes with `/`.
//!
//! Every error carries the line and column where the parser stopped. The
//! parser bounds nesting (so that a hostile file cannot overflow the stack,
//! while parsing, evaluating or dropping the tree) and the file size.

use std::collections::HashMap;
use std::sync::Arc;

use crate::ast::*;
use crate::error::RulesError;

/// Rules files larger than this are refused (Firestore's limit is 256 KB).
pub const MAX_RULES_BYTES: usize = 256 * 1024;
/// Maximum nesting of expressions (and of `match` blocks).
pub const MAX_EXPR_DEPTH: usize = 64;

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Int(i64),
    Float(f64),
    Str(String),
    Sym(&'static str),
    Eof,
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::Ident(s) => format!("'{s}'"),
            Tok::Int(i) => format!("number {i}"),
            Tok::Float(f) => format!("number {f}"),
            Tok::Str(_) => "a string".into(),
            Tok::Sym(s) => format!("'{s}'"),
            Tok::Eof => "end of file".into(),
        }
    }
}

const SYMBOLS: [&str; 26] = [
    "==", "!=", "<=", ">=", "&&", "||", "{", "}", "(", ")", "[", "]", ";", ",", ":", ".", "?", "!",
    "=", "<", ">", "+", "-", "*", "/", "%",
];

pub(crate) struct Parser {
    src: Vec<char>,
    /// Index of the first character of each line.
    line_starts: Vec<usize>,
    i: usize,
    depth: usize,
}

type PResult<T> = Result<T, RulesError>;

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn is_path_char(c: char) -> bool {
    c.is_alphanumeric() || "_-.~%@:+".contains(c)
}

const KEYWORDS: [&str; 6] = ["true", "false", "null", "in", "is", "if"];

impl Parser {
    pub fn new(text: &str) -> Parser {
        let src: Vec<char> = text.chars().collect();
        let mut line_starts = vec![0];
        for (i, c) in src.iter().enumerate() {
            if *c == '\n' {
                line_starts.push(i + 1);
            }
        }
        Parser {
            src,
            line_starts,
            i: 0,
            depth: 0,
        }
    }

    fn pos_at(&self, idx: usize) -> Pos {
        let line = match self.line_starts.binary_search(&idx) {
            Ok(l) => l,
            Err(l) => l - 1,
        };
        Pos {
            line: line as u32 + 1,
            column: (idx - self.line_starts[line]) as u32 + 1,
        }
    }

    fn err_at<T>(&self, idx: usize, message: impl Into<String>) -> PResult<T> {
        let p = self.pos_at(idx);
        Err(RulesError::syntax(p.line, p.column, message))
    }

    fn char_at(&self, idx: usize) -> Option<char> {
        self.src.get(idx).copied()
    }

    /// Skips whitespace and comments from `self.i`.
    fn skip_trivia(&mut self) -> PResult<()> {
        loop {
            match self.char_at(self.i) {
                Some(c) if c.is_whitespace() => self.i += 1,
                Some('/') if self.char_at(self.i + 1) == Some('/') => {
                    while let Some(c) = self.char_at(self.i) {
                        if c == '\n' {
                            break;
                        }
                        self.i += 1;
                    }
                }
                Some('/') if self.char_at(self.i + 1) == Some('*') => {
                    let start = self.i;
                    self.i += 2;
                    loop {
                        match self.char_at(self.i) {
                            None => return self.err_at(start, "unterminated /* comment"),
                            Some('*') if self.char_at(self.i + 1) == Some('/') => {
                                self.i += 2;
                                break;
                            }
                            Some(_) => self.i += 1,
                        }
                    }
                }
                _ => return Ok(()),
            }
        }
    }

    /// Lexes the token at the current position: returns it with its start
    /// and end index, without consuming it.
    fn lex(&mut self) -> PResult<(Tok, usize, usize)> {
        self.skip_trivia()?;
        let start = self.i;
        let Some(c) = self.char_at(start) else {
            return Ok((Tok::Eof, start, start));
        };
        if is_ident_start(c) {
            let mut end = start;
            while self.char_at(end).is_some_and(is_ident_char) {
                end += 1;
            }
            let text: String = self.src[start..end].iter().collect();
            return Ok((Tok::Ident(text), start, end));
        }
        if c.is_ascii_digit() {
            return self.lex_number(start);
        }
        if c == '\'' || c == '"' {
            return self.lex_string(start, c);
        }
        for sym in SYMBOLS {
            let len = sym.len();
            if self.src.len() >= start + len
                && self.src[start..start + len].iter().copied().eq(sym.chars())
            {
                return Ok((Tok::Sym(sym), start, start + len));
            }
        }
        self.err_at(start, format!("unexpected character {c:?}"))
    }

    fn lex_number(&self, start: usize) -> PResult<(Tok, usize, usize)> {
        let mut end = start;
        while self.char_at(end).is_some_and(|c| c.is_ascii_digit()) {
            end += 1;
        }
        let mut is_float = false;
        if self.char_at(end) == Some('.')
            && self.char_at(end + 1).is_some_and(|c| c.is_ascii_digit())
        {
            is_float = true;
            end += 1;
            while self.char_at(end).is_some_and(|c| c.is_ascii_digit()) {
                end += 1;
            }
        }
        if matches!(self.char_at(end), Some('e' | 'E')) {
            let mut j = end + 1;
            if matches!(self.char_at(j), Some('+' | '-')) {
                j += 1;
            }
            if self.char_at(j).is_some_and(|c| c.is_ascii_digit()) {
                is_float = true;
                end = j;
                while self.char_at(end).is_some_and(|c| c.is_ascii_digit()) {
                    end += 1;
                }
            }
        }
        let text: String = self.src[start..end].iter().collect();
        if is_float {
            match text.parse::<f64>() {
                Ok(f) => Ok((Tok::Float(f), start, end)),
                Err(_) => self.err_at(start, format!("invalid number {text}")),
            }
        } else {
            match text.parse::<i64>() {
                Ok(i) => Ok((Tok::Int(i), start, end)),
                Err(_) => self.err_at(start, format!("integer {text} does not fit in 64 bits")),
            }
        }
    }

    fn lex_string(&self, start: usize, quote: char) -> PResult<(Tok, usize, usize)> {
        let mut out = String::new();
        let mut j = start + 1;
        loop {
            match self.char_at(j) {
                None | Some('\n') => return self.err_at(start, "unterminated string"),
                Some(c) if c == quote => return Ok((Tok::Str(out), start, j + 1)),
                Some('\\') => {
                    let esc = self.char_at(j + 1);
                    j += 2;
                    match esc {
                        Some('n') => out.push('\n'),
                        Some('t') => out.push('\t'),
                        Some('r') => out.push('\r'),
                        Some('0') => out.push('\0'),
                        Some('\\') => out.push('\\'),
                        Some('\'') => out.push('\''),
                        Some('"') => out.push('"'),
                        Some('/') => out.push('/'),
                        Some('u') => {
                            let hex: String = (0..4).filter_map(|k| self.char_at(j + k)).collect();
                            let ch = (hex.len() == 4)
                                .then(|| u32::from_str_radix(&hex, 16).ok())
                                .flatten()
                                .and_then(char::from_u32);
                            match ch {
                                Some(ch) => out.push(ch),
                                None => return self.err_at(
                                    j - 2,
                                    "\\u must be followed by four hex digits of a valid character",
                                ),
                            }
                            j += 4;
                        }
                        _ => {
                            return self.err_at(
                                j - 2,
                                "unknown escape; use \\n \\t \\r \\0 \\\\ \\' \\\" \\/ or \\uXXXX",
                            )
                        }
                    }
                }
                Some(c) => {
                    out.push(c);
                    j += 1;
                }
            }
        }
    }

    fn peek(&mut self) -> PResult<Tok> {
        Ok(self.lex()?.0)
    }

    fn next(&mut self) -> PResult<(Tok, usize)> {
        let (tok, start, end) = self.lex()?;
        self.i = end;
        Ok((tok, start))
    }

    fn peek_sym(&mut self, sym: &str) -> PResult<bool> {
        Ok(matches!(self.peek()?, Tok::Sym(s) if s == sym))
    }

    fn peek_ident(&mut self, word: &str) -> PResult<bool> {
        Ok(matches!(self.peek()?, Tok::Ident(s) if s == word))
    }

    fn eat_sym(&mut self, sym: &str) -> PResult<bool> {
        if self.peek_sym(sym)? {
            self.next()?;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    fn expect_sym(&mut self, sym: &str, context: &str) -> PResult<()> {
        let (tok, start, _) = self.lex()?;
        if matches!(tok, Tok::Sym(s) if s == sym) {
            self.next()?;
            Ok(())
        } else {
            self.err_at(
                start,
                format!("expected '{sym}' {context}, found {}", tok.describe()),
            )
        }
    }

    fn expect_ident(&mut self, what: &str) -> PResult<(String, usize)> {
        let (tok, start, _) = self.lex()?;
        match tok {
            Tok::Ident(name) if !KEYWORDS.contains(&name.as_str()) => {
                self.next()?;
                Ok((name, start))
            }
            other => self.err_at(
                start,
                format!("expected {what}, found {}", other.describe()),
            ),
        }
    }

    fn enter(&mut self, at: usize) -> PResult<()> {
        self.depth += 1;
        if self.depth > MAX_EXPR_DEPTH {
            return self.err_at(at, format!("nesting deeper than {MAX_EXPR_DEPTH} levels"));
        }
        Ok(())
    }

    fn leave(&mut self, n: usize) {
        self.depth -= n;
    }

    // ---- file structure ----

    pub fn parse_file(mut self) -> PResult<MatchBlock> {
        if self.src.len() > MAX_RULES_BYTES {
            return self.err_at(
                0,
                format!("rules file is larger than {MAX_RULES_BYTES} bytes"),
            );
        }
        let mut root = MatchBlock {
            path: vec![],
            fixed: vec![],
            functions: HashMap::new(),
            allows: vec![],
            children: vec![],
        };
        if self.peek_ident("rules_version")? {
            self.next()?;
            self.expect_sym("=", "after rules_version")?;
            let (tok, start) = self.next()?;
            match tok {
                Tok::Str(v) if v == "1" || v == "2" => {}
                Tok::Str(v) => {
                    return self.err_at(start, format!("unsupported rules_version {v:?}; use '2'"))
                }
                other => {
                    return self.err_at(
                        start,
                        format!(
                            "expected a version string such as '2', found {}",
                            other.describe()
                        ),
                    )
                }
            }
            self.expect_sym(";", "after rules_version")?;
        }
        let mut saw_service = false;
        loop {
            let (tok, start, _) = self.lex()?;
            match tok {
                Tok::Eof => break,
                Tok::Ident(ref w) if w == "service" => {
                    if saw_service {
                        return self.err_at(start, "only one service block is allowed");
                    }
                    saw_service = true;
                    self.next()?;
                    let (name, name_at) =
                        self.expect_ident("a service name such as cloud.firestore")?;
                    let mut full = name;
                    while self.eat_sym(".")? {
                        full.push('.');
                        full.push_str(&self.expect_ident("a service name")?.0);
                    }
                    if full != "cloud.firestore" && full != "hearth" {
                        return self.err_at(
                            name_at,
                            format!("unknown service {full:?}; use cloud.firestore"),
                        );
                    }
                    self.expect_sym("{", "to open the service block")?;
                    self.parse_items(&mut root, true)?;
                }
                _ => self.parse_item(&mut root, true)?,
            }
        }
        Ok(root)
    }

    /// Parses items until the closing `}` (consumed).
    fn parse_items(&mut self, block: &mut MatchBlock, top: bool) -> PResult<()> {
        loop {
            let (tok, start, _) = self.lex()?;
            match tok {
                Tok::Sym("}") => {
                    self.next()?;
                    return Ok(());
                }
                Tok::Eof => {
                    return self.err_at(start, "expected '}' to close the block, found end of file")
                }
                _ => self.parse_item(block, top)?,
            }
        }
    }

    fn parse_item(&mut self, block: &mut MatchBlock, top: bool) -> PResult<()> {
        let (tok, start, _) = self.lex()?;
        match tok {
            Tok::Ident(w) if w == "match" => {
                self.next()?;
                let child = self.parse_match(start, top)?;
                block.children.push(child);
                Ok(())
            }
            Tok::Ident(w) if w == "allow" => {
                self.next()?;
                let allow = self.parse_allow()?;
                block.allows.push(allow);
                Ok(())
            }
            Tok::Ident(w) if w == "function" => {
                self.next()?;
                let f = self.parse_function()?;
                if block.functions.contains_key(&f.name) {
                    return self.err_at(
                        start,
                        format!("function {} is defined twice in this block", f.name),
                    );
                }
                block.functions.insert(f.name.clone(), Arc::new(f));
                Ok(())
            }
            other => self.err_at(
                start,
                format!(
                    "expected 'match', 'allow' or 'function', found {}",
                    other.describe()
                ),
            ),
        }
    }

    fn parse_match(&mut self, at: usize, top: bool) -> PResult<MatchBlock> {
        self.enter(at)?;
        self.skip_trivia()?;
        let mut path = Vec::new();
        if self.char_at(self.i) != Some('/') {
            return self.err_at(self.i, "expected a path starting with '/' after match");
        }
        while self.char_at(self.i) == Some('/') {
            self.i += 1;
            let seg_at = self.i;
            if self.char_at(self.i) == Some('{') {
                self.i += 1;
                let name_start = self.i;
                while self.char_at(self.i).is_some_and(is_ident_char) {
                    self.i += 1;
                }
                let name: String = self.src[name_start..self.i].iter().collect();
                if name.is_empty() || !name.starts_with(is_ident_start) {
                    return self.err_at(name_start, "expected a variable name inside { }");
                }
                if self.char_at(self.i) == Some('=') {
                    if self.char_at(self.i + 1) == Some('*')
                        && self.char_at(self.i + 2) == Some('*')
                    {
                        if path.iter().any(|s| matches!(s, MatchSeg::Rest(_))) {
                            return self.err_at(
                                seg_at,
                                "only one {name=**} wildcard is allowed in a match path",
                            );
                        }
                        self.i += 3;
                        path.push(MatchSeg::Rest(name));
                    } else {
                        return self.err_at(self.i, "expected '=**' for a recursive wildcard");
                    }
                } else {
                    path.push(MatchSeg::Var(name));
                }
                if self.char_at(self.i) != Some('}') {
                    return self.err_at(self.i, "expected '}' to close the path variable");
                }
                self.i += 1;
            } else {
                let s = self.i;
                while self.char_at(self.i).is_some_and(is_path_char) {
                    self.i += 1;
                }
                if s == self.i {
                    return self.err_at(s, "expected a path segment after '/'");
                }
                path.push(MatchSeg::Lit(self.src[s..self.i].iter().collect()));
            }
        }
        let mut fixed = Vec::new();
        // The Firestore wrapper `/databases/{database}/documents` names the
        // database, not documents: it consumes no segment of a document path.
        if top
            && path.len() >= 3
            && path[0] == MatchSeg::Lit("databases".into())
            && path[2] == MatchSeg::Lit("documents".into())
        {
            match &path[1] {
                MatchSeg::Var(v) => fixed.push((v.clone(), "(default)".to_string())),
                MatchSeg::Lit(l) if l == "(default)" => {}
                _ => return self.err_at(at, "the database segment must be {database}"),
            }
            path.drain(..3);
        }
        self.expect_sym("{", "to open the match block")?;
        let mut block = MatchBlock {
            path,
            fixed,
            functions: HashMap::new(),
            allows: vec![],
            children: vec![],
        };
        self.parse_items(&mut block, false)?;
        self.leave(1);
        Ok(block)
    }

    fn parse_allow(&mut self) -> PResult<Allow> {
        let mut methods = 0u8;
        loop {
            let (name, at) =
                self.expect_ident("a method (read, write, get, list, create, update, delete)")?;
            methods |= match name.as_str() {
                "read" => Method::Get.bit() | Method::List.bit(),
                "write" => Method::Create.bit() | Method::Update.bit() | Method::Delete.bit(),
                other => match Method::parse(other) {
                    Some(m) => m.bit(),
                    None => return self.err_at(at, format!("unknown method {other:?}; use read, write, get, list, create, update or delete")),
                },
            };
            if !self.eat_sym(",")? {
                break;
            }
        }
        let condition = if self.eat_sym(":")? {
            let (tok, at, _) = self.lex()?;
            if !matches!(tok, Tok::Ident(ref w) if w == "if") {
                return self.err_at(
                    at,
                    format!("expected 'if' after ':', found {}", tok.describe()),
                );
            }
            self.next()?;
            Some(self.parse_expr()?)
        } else {
            None
        };
        let what = if condition.is_some() {
            "after allow condition"
        } else {
            "after allow"
        };
        self.expect_sym(";", what)?;
        Ok(Allow { methods, condition })
    }

    fn parse_function(&mut self) -> PResult<FunctionDef> {
        let (name, _) = self.expect_ident("a function name")?;
        self.expect_sym("(", "after the function name")?;
        let mut params = Vec::new();
        if !self.eat_sym(")")? {
            loop {
                let (p, at) = self.expect_ident("a parameter name")?;
                if params.contains(&p) {
                    return self.err_at(at, format!("parameter {p} is declared twice"));
                }
                params.push(p);
                if self.eat_sym(")")? {
                    break;
                }
                self.expect_sym(",", "between parameters")?;
            }
        }
        self.expect_sym("{", "to open the function body")?;
        let mut lets = Vec::new();
        loop {
            let (tok, at, _) = self.lex()?;
            match tok {
                Tok::Ident(w) if w == "let" => {
                    self.next()?;
                    let (var, _) = self.expect_ident("a variable name after let")?;
                    self.expect_sym("=", "after the let variable")?;
                    let e = self.parse_expr()?;
                    self.expect_sym(";", "after the let value")?;
                    lets.push((var, e));
                }
                Tok::Ident(w) if w == "return" => {
                    self.next()?;
                    break;
                }
                other => {
                    return self.err_at(
                        at,
                        format!(
                            "expected 'let' or 'return' in function {name}, found {}",
                            other.describe()
                        ),
                    )
                }
            }
        }
        let body = self.parse_expr()?;
        self.eat_sym(";")?;
        self.expect_sym("}", "to close the function body")?;
        Ok(FunctionDef {
            name,
            params,
            lets,
            body,
        })
    }

    // ---- expressions ----

    pub fn parse_expr(&mut self) -> PResult<Expr> {
        let (_, at, _) = self.lex()?;
        self.enter(at)?;
        let cond = self.parse_or()?;
        let result = if self.peek_sym("?")? {
            self.next()?;
            let a = self.parse_expr()?;
            self.expect_sym(":", "in the conditional expression")?;
            let b = self.parse_expr()?;
            let pos = cond.pos;
            Expr {
                kind: ExprKind::Ternary(Box::new(cond), Box::new(a), Box::new(b)),
                pos,
            }
        } else {
            cond
        };
        self.leave(1);
        Ok(result)
    }

    /// Parses a left-associative chain; each extra operand deepens the tree,
    /// so it counts against the nesting limit.
    fn chain(
        &mut self,
        ops: &[(&'static str, BinOp)],
        next: fn(&mut Parser) -> PResult<Expr>,
    ) -> PResult<Expr> {
        let mut left = next(self)?;
        let mut added = 0;
        loop {
            let (tok, at, _) = self.lex()?;
            let op = match tok {
                Tok::Sym(s) => ops.iter().find(|(t, _)| *t == s).map(|(_, op)| *op),
                Tok::Ident(ref w) if w == "in" => {
                    ops.iter().find(|(t, _)| *t == "in").map(|(_, op)| *op)
                }
                _ => None,
            };
            let Some(op) = op else { break };
            self.next()?;
            self.enter(at)?;
            added += 1;
            let right = next(self)?;
            let pos = left.pos;
            left = Expr {
                kind: ExprKind::Binary(op, Box::new(left), Box::new(right)),
                pos,
            };
        }
        self.leave(added);
        Ok(left)
    }

    fn parse_or(&mut self) -> PResult<Expr> {
        self.assoc_chain("||", BinOp::Or, Parser::parse_and)
    }

    fn parse_and(&mut self) -> PResult<Expr> {
        self.assoc_chain("&&", BinOp::And, Parser::parse_rel)
    }

    /// `&&` and `||` chains are built as balanced trees: the operators are
    /// associative (errors included, see the evaluator), so a rule with a
    /// hundred conditions costs log2(100) levels of nesting, not a hundred.
    /// Operands stay in source order, so short-circuiting is unchanged.
    fn assoc_chain(
        &mut self,
        sym: &'static str,
        op: BinOp,
        next: fn(&mut Parser) -> PResult<Expr>,
    ) -> PResult<Expr> {
        let mut operands = vec![next(self)?];
        while self.peek_sym(sym)? {
            self.next()?;
            operands.push(next(self)?);
        }
        let (_, at, _) = self.lex()?;
        let levels = usize::BITS - (operands.len() - 1).leading_zeros();
        for _ in 0..levels {
            self.enter(at)?;
        }
        self.leave(levels as usize);
        Ok(balanced(op, operands))
    }

    fn parse_rel(&mut self) -> PResult<Expr> {
        let mut left = self.parse_add()?;
        let mut added = 0;
        loop {
            let (tok, at, _) = self.lex()?;
            let op = match tok {
                Tok::Sym("==") => BinOp::Eq,
                Tok::Sym("!=") => BinOp::Ne,
                Tok::Sym("<") => BinOp::Lt,
                Tok::Sym("<=") => BinOp::Le,
                Tok::Sym(">") => BinOp::Gt,
                Tok::Sym(">=") => BinOp::Ge,
                Tok::Ident(ref w) if w == "in" => BinOp::In,
                Tok::Ident(ref w) if w == "is" => {
                    self.next()?;
                    self.enter(at)?;
                    added += 1;
                    let (tok, tat) = self.next()?;
                    let ty = match &tok {
                        Tok::Ident(name) => TypeName::parse(name),
                        _ => None,
                    };
                    let Some(ty) = ty else {
                        return self.err_at(tat, format!("expected a type name after 'is' (string, int, float, number, bool, null, list, map, timestamp, duration, path, bytes), found {}", tok.describe()));
                    };
                    let pos = left.pos;
                    left = Expr {
                        kind: ExprKind::Is(Box::new(left), ty),
                        pos,
                    };
                    continue;
                }
                _ => break,
            };
            self.next()?;
            self.enter(at)?;
            added += 1;
            let right = self.parse_add()?;
            let pos = left.pos;
            left = Expr {
                kind: ExprKind::Binary(op, Box::new(left), Box::new(right)),
                pos,
            };
        }
        self.leave(added);
        Ok(left)
    }

    fn parse_add(&mut self) -> PResult<Expr> {
        self.chain(&[("+", BinOp::Add), ("-", BinOp::Sub)], Parser::parse_mul)
    }

    fn parse_mul(&mut self) -> PResult<Expr> {
        self.chain(
            &[("*", BinOp::Mul), ("/", BinOp::Div), ("%", BinOp::Rem)],
            Parser::parse_unary,
        )
    }

    fn parse_unary(&mut self) -> PResult<Expr> {
        let (tok, at, _) = self.lex()?;
        let op = match tok {
            Tok::Sym("!") => UnOp::Not,
            Tok::Sym("-") => UnOp::Neg,
            _ => return self.parse_postfix(),
        };
        self.next()?;
        self.enter(at)?;
        let inner = self.parse_unary()?;
        self.leave(1);
        let pos = self.pos_at(at);
        // Fold negative literals so that i64::MIN is writable.
        if op == UnOp::Neg {
            match inner.kind {
                ExprKind::Int(i) => {
                    return Ok(Expr {
                        kind: ExprKind::Int(-i),
                        pos,
                    })
                }
                ExprKind::Float(f) => {
                    return Ok(Expr {
                        kind: ExprKind::Float(-f),
                        pos,
                    })
                }
                _ => {}
            }
        }
        Ok(Expr {
            kind: ExprKind::Unary(op, Box::new(inner)),
            pos,
        })
    }

    fn parse_postfix(&mut self) -> PResult<Expr> {
        let mut e = self.parse_primary()?;
        let mut added = 0;
        loop {
            let (tok, at, _) = self.lex()?;
            match tok {
                Tok::Sym(".") => {
                    self.next()?;
                    self.enter(at)?;
                    added += 1;
                    let (name, _) = self.expect_member_name()?;
                    if self.peek_sym("(")? {
                        self.next()?;
                        let args = self.parse_args(")")?;
                        let pos = e.pos;
                        e = Expr {
                            kind: ExprKind::Method(Box::new(e), name, args),
                            pos,
                        };
                    } else {
                        let pos = e.pos;
                        e = Expr {
                            kind: ExprKind::Member(Box::new(e), name),
                            pos,
                        };
                    }
                }
                Tok::Sym("[") => {
                    self.next()?;
                    self.enter(at)?;
                    added += 1;
                    let index = self.parse_expr()?;
                    if self.eat_sym(":")? {
                        let to = self.parse_expr()?;
                        self.expect_sym("]", "to close the slice")?;
                        let pos = e.pos;
                        e = Expr {
                            kind: ExprKind::Slice(Box::new(e), Box::new(index), Box::new(to)),
                            pos,
                        };
                        continue;
                    }
                    self.expect_sym("]", "or ':' to close the index")?;
                    let pos = e.pos;
                    e = Expr {
                        kind: ExprKind::Index(Box::new(e), Box::new(index)),
                        pos,
                    };
                }
                Tok::Sym("(") => {
                    let ExprKind::Ident(name) = &e.kind else {
                        return self.err_at(at, "only named functions can be called");
                    };
                    let name = name.clone();
                    self.next()?;
                    self.enter(at)?;
                    added += 1;
                    let args = self.parse_args(")")?;
                    let pos = e.pos;
                    e = Expr {
                        kind: ExprKind::Call(name, args),
                        pos,
                    };
                }
                _ => break,
            }
        }
        self.leave(added);
        Ok(e)
    }

    /// Member names may be keywords-like words (`request.resource.data.in`
    /// is unusual but legal in Firestore), so any identifier goes.
    fn expect_member_name(&mut self) -> PResult<(String, usize)> {
        let (tok, start, _) = self.lex()?;
        match tok {
            Tok::Ident(name) => {
                self.next()?;
                Ok((name, start))
            }
            other => self.err_at(
                start,
                format!(
                    "expected a field or method name after '.', found {}",
                    other.describe()
                ),
            ),
        }
    }

    fn parse_args(&mut self, close: &str) -> PResult<Vec<Expr>> {
        let mut args = Vec::new();
        if self.eat_sym(close)? {
            return Ok(args);
        }
        loop {
            args.push(self.parse_expr()?);
            if self.eat_sym(close)? {
                return Ok(args);
            }
            self.expect_sym(",", &format!("or '{close}' in the argument list"))?;
        }
    }

    fn parse_primary(&mut self) -> PResult<Expr> {
        let (tok, at, _) = self.lex()?;
        let pos = self.pos_at(at);
        let kind = match tok {
            Tok::Int(i) => {
                self.next()?;
                ExprKind::Int(i)
            }
            Tok::Float(f) => {
                self.next()?;
                ExprKind::Float(f)
            }
            Tok::Str(s) => {
                self.next()?;
                ExprKind::Str(s)
            }
            Tok::Ident(w) => {
                self.next()?;
                match w.as_str() {
                    "true" => ExprKind::Bool(true),
                    "false" => ExprKind::Bool(false),
                    "null" => ExprKind::Null,
                    "in" | "is" | "if" => {
                        return self.err_at(at, format!("expected an expression, found '{w}'"))
                    }
                    _ => ExprKind::Ident(w),
                }
            }
            Tok::Sym("(") => {
                self.next()?;
                let e = self.parse_expr()?;
                self.expect_sym(")", "to close the parenthesis")?;
                return Ok(e);
            }
            Tok::Sym("[") => {
                self.next()?;
                ExprKind::List(self.parse_args("]")?)
            }
            Tok::Sym("{") => {
                self.next()?;
                let mut entries = Vec::new();
                if !self.eat_sym("}")? {
                    loop {
                        let (key_tok, kat) = self.next()?;
                        let key = match key_tok {
                            Tok::Str(s) | Tok::Ident(s) => s,
                            other => {
                                return self.err_at(
                                    kat,
                                    format!(
                                        "expected a map key (a string), found {}",
                                        other.describe()
                                    ),
                                )
                            }
                        };
                        self.expect_sym(":", "after the map key")?;
                        let value = self.parse_expr()?;
                        entries.push((key, value));
                        if self.eat_sym("}")? {
                            break;
                        }
                        self.expect_sym(",", "or '}' in the map literal")?;
                    }
                }
                ExprKind::Map(entries)
            }
            Tok::Sym("/") => ExprKind::Path(self.parse_path_literal()?),
            other => {
                return self.err_at(
                    at,
                    format!("expected an expression, found {}", other.describe()),
                )
            }
        };
        Ok(Expr { kind, pos })
    }

    /// `/a/b/$(expr)/c`, scanned from the raw text (trivia already skipped).
    fn parse_path_literal(&mut self) -> PResult<Vec<PathPart>> {
        let mut parts = Vec::new();
        while self.char_at(self.i) == Some('/') {
            self.i += 1;
            if self.char_at(self.i) == Some('$') && self.char_at(self.i + 1) == Some('(') {
                let at = self.i;
                self.i += 2;
                self.enter(at)?;
                let e = self.parse_expr()?;
                self.expect_sym(")", "to close $( in the path")?;
                self.leave(1);
                parts.push(PathPart::Interp(e));
            } else {
                let s = self.i;
                while self.char_at(self.i).is_some_and(is_path_char) {
                    self.i += 1;
                }
                if s == self.i {
                    return self.err_at(s, "expected a path segment or $(expression) after '/'");
                }
                parts.push(PathPart::Lit(self.src[s..self.i].iter().collect()));
            }
        }
        Ok(parts)
    }
}

fn balanced(op: BinOp, mut operands: Vec<Expr>) -> Expr {
    if operands.len() == 1 {
        return operands.remove(0);
    }
    let right = operands.split_off(operands.len() / 2);
    let left = balanced(op, operands);
    let right = balanced(op, right);
    let pos = left.pos;
    Expr {
        kind: ExprKind::Binary(op, Box::new(left), Box::new(right)),
        pos,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn expr(text: &str) -> Expr {
        let mut p = Parser::new(text);
        let e = p.parse_expr().unwrap();
        assert_eq!(p.peek().unwrap(), Tok::Eof, "trailing input in {text}");
        e
    }

    fn err(text: &str) -> (u32, u32, String) {
        match Parser::new(text).parse_file() {
            Err(RulesError::Syntax {
                line,
                column,
                message,
                ..
            }) => (line, column, message),
            other => panic!("expected a syntax error for {text:?}, got {other:?}"),
        }
    }

    #[test]
    fn precedence_binds_and_tighter_than_or_and_mul_tighter_than_add() {
        let e = expr("a || b && c");
        assert!(
            matches!(e.kind, ExprKind::Binary(BinOp::Or, _, ref r) if matches!(r.kind, ExprKind::Binary(BinOp::And, _, _)))
        );
        let e = expr("1 + 2 * 3");
        assert!(
            matches!(e.kind, ExprKind::Binary(BinOp::Add, _, ref r) if matches!(r.kind, ExprKind::Binary(BinOp::Mul, _, _)))
        );
        let e = expr("a == 1 ? b : c");
        assert!(matches!(e.kind, ExprKind::Ternary(..)));
        let e = expr("x is string && 'a' in l");
        assert!(matches!(e.kind, ExprKind::Binary(BinOp::And, ref l, ref r)
            if matches!(l.kind, ExprKind::Is(_, TypeName::String)) && matches!(r.kind, ExprKind::Binary(BinOp::In, _, _))));
    }

    #[test]
    fn literals_parse_with_escapes_and_negative_numbers() {
        assert!(matches!(expr("'a\\'b\\n\\u0041'").kind, ExprKind::Str(ref s) if s == "a'b\nA"));
        assert!(matches!(expr("\"dq\"").kind, ExprKind::Str(ref s) if s == "dq"));
        assert!(matches!(
            expr("-9223372036854775807").kind,
            ExprKind::Int(-9223372036854775807)
        ));
        assert!(matches!(expr("1.5e3").kind, ExprKind::Float(f) if f == 1500.0));
        assert!(matches!(expr("[1, 'a', null, true]").kind, ExprKind::List(ref l) if l.len() == 4));
        assert!(matches!(expr("{'a': 1, b: [2]}").kind, ExprKind::Map(ref m) if m.len() == 2));
        assert!(matches!(expr("{}").kind, ExprKind::Map(ref m) if m.is_empty()));
    }

    #[test]
    fn path_literals_accept_interpolation_and_stop_at_non_path_characters() {
        let e = expr("get(/databases/$(database)/documents/rooms/$(roomId)).data.members");
        let ExprKind::Member(inner, _) = e.kind else {
            panic!()
        };
        let ExprKind::Member(call, _) = inner.kind else {
            panic!()
        };
        let ExprKind::Call(name, args) = call.kind else {
            panic!()
        };
        assert_eq!(name, "get");
        let ExprKind::Path(parts) = &args[0].kind else {
            panic!()
        };
        assert_eq!(parts.len(), 5);
        assert!(matches!(parts[1], PathPart::Interp(_)));
        assert!(matches!(expr("exists(/rooms/r1)").kind, ExprKind::Call(..)));
        // Division is still division.
        assert!(matches!(
            expr("a / 2").kind,
            ExprKind::Binary(BinOp::Div, _, _)
        ));
    }

    #[test]
    fn full_firestore_file_parses_with_wrapper_functions_and_wildcards() {
        let text = r#"
rules_version = '2';
// a comment
service cloud.firestore {
  match /databases/{database}/documents {
    function signedIn() { return request.auth != null; }
    match /rooms/{roomId} {
      function isMember(uid) {
        let room = get(/databases/$(database)/documents/rooms/$(roomId));
        return uid in room.data.members;
      }
      allow read: if signedIn() && isMember(request.auth.uid);
      allow create, update: if signedIn();
      /* block comment */
      match /messages/{msg} {
        allow write: if false;
      }
    }
    match /{rest=**} { allow read; }
  }
}"#;
        let root = Parser::new(text).parse_file().unwrap();
        assert_eq!(root.children.len(), 1);
        let db = &root.children[0];
        assert!(db.path.is_empty());
        assert_eq!(
            db.fixed,
            vec![("database".to_string(), "(default)".to_string())]
        );
        assert!(db.functions.contains_key("signedIn"));
        assert_eq!(db.children.len(), 2);
        let rooms = &db.children[0];
        assert_eq!(
            rooms.path,
            vec![
                MatchSeg::Lit("rooms".into()),
                MatchSeg::Var("roomId".into())
            ]
        );
        assert_eq!(rooms.allows.len(), 2);
        assert_eq!(rooms.allows[0].methods, 3);
        assert_eq!(rooms.allows[1].methods, 4 | 8);
        assert_eq!(rooms.children[0].allows[0].methods, 28);
        assert_eq!(db.children[1].path, vec![MatchSeg::Rest("rest".into())]);
        assert!(db.children[1].allows[0].condition.is_none());
    }

    #[test]
    fn bare_top_level_match_blocks_parse_without_the_wrapper() {
        let root = Parser::new("match /a/{b} { allow get: if true; }\nfunction f() { return 1; }")
            .parse_file()
            .unwrap();
        assert_eq!(root.children.len(), 1);
        assert!(root.functions.contains_key("f"));
    }

    #[test]
    fn errors_point_at_line_and_column() {
        assert_eq!(
            err("match /a/{b} {\n  allow read: if true\n}"),
            (3, 1, "expected ';' after allow condition, found '}'".into())
        );
        let (l, c, m) = err("match /a {\n  allow reed: if true;\n}");
        assert_eq!((l, c), (2, 9));
        assert!(m.contains("unknown method \"reed\""), "{m}");
        let (l, c, m) = err("match /a {\n  allow read: if 1 +;\n}");
        assert_eq!((l, c), (2, 21));
        assert!(m.contains("expected an expression"), "{m}");
        let (l, c, _) = err("match /a {\n  allow read: if 'abc;\n}");
        assert_eq!((l, c), (2, 18));
        let (l, _, m) = err("match /a/{x=*} { }");
        assert_eq!(l, 1);
        assert!(m.contains("=**"), "{m}");
        let (_, _, m) = err("match /{a=**}/b/{c=**} { }");
        assert!(m.contains("only one"), "{m}");
        assert!(Parser::new("match /{path=**}/posts/{post} { allow read; }")
            .parse_file()
            .is_ok());
        let (l, c, m) = err("match /a {\n  allow read: if x is strng;\n}");
        assert_eq!((l, c), (2, 23));
        assert!(m.contains("type name"), "{m}");
        let (_, _, m) = err("match /a { allow read: if true; ");
        assert!(m.contains("end of file"), "{m}");
        let (_, _, m) = err("rules_version = '3';");
        assert!(m.contains("rules_version"), "{m}");
        let (_, _, m) = err("function f() { return 1; }\nfunction f() { return 2; }");
        assert!(m.contains("defined twice"), "{m}");
        let (_, _, m) = err("match /a { allow read: if x.y(; }");
        assert!(m.contains("expected an expression"), "{m}");
        let (_, _, m) = err("service other.thing { }");
        assert!(m.contains("unknown service"), "{m}");
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let deep = format!(
            "match /a {{ allow read: if {}true{}; }}",
            "(".repeat(10_000),
            ")".repeat(10_000)
        );
        assert!(err(&deep).2.contains("nesting"));
        let chain = format!("match /a {{ allow read: if 1{}; }}", " + 1".repeat(10_000));
        assert!(err(&chain).2.contains("nesting"));
        // Long && / || chains are balanced, so realistic rules fit easily.
        let conds = format!(
            "match /a {{ allow read: if true{}; }}",
            " && true".repeat(1000)
        );
        assert!(Parser::new(&conds).parse_file().is_ok());
        let nots = format!("match /a {{ allow read: if {}true; }}", "!".repeat(10_000));
        assert!(err(&nots).2.contains("nesting"));
        let members = format!("match /a {{ allow read: if x{}; }}", ".y".repeat(10_000));
        assert!(err(&members).2.contains("nesting"));
        let matches = format!("{}{}", "match /a { ".repeat(1000), "}".repeat(1000));
        assert!(err(&matches).2.contains("nesting"));
    }
}
