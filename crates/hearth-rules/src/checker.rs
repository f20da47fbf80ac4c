//! Static checks run after parsing, so that a typo fails at load time with
//! its line and column instead of silently denying at run time:
//! - every variable is in scope: `request`, `resource`, `database`, the path
//!   variables of the enclosing `match` blocks, and inside a function its
//!   parameters and earlier `let`s (lexical scope, as in Firestore);
//! - every call names a builtin, a namespaced builtin (`math.abs`), or a
//!   user function defined in this block or an enclosing one, with the
//!   right number of arguments;
//! - no function calls itself, directly or through others.

use std::collections::HashMap;
use std::sync::Arc;

use crate::ast::*;
use crate::error::RulesError;

const GLOBALS: [&str; 3] = ["request", "resource", "database"];

/// Builtins and their accepted argument counts.
fn builtin_arity(name: &str) -> Option<&'static [usize]> {
    Some(match name {
        "get" | "exists" | "getAfter" | "existsAfter" | "int" | "float" | "string" | "bool"
        | "path" | "debug" | "size" => &[1],
        _ => return None,
    })
}

fn namespaced_arity(ns: &str, name: &str) -> Option<&'static [usize]> {
    Some(match (ns, name) {
        ("math", "abs" | "ceil" | "floor" | "round" | "sqrt" | "isNaN" | "isInfinite") => &[1],
        ("math", "pow") => &[2],
        ("duration", "value") => &[2],
        ("duration", "time") => &[4],
        ("timestamp", "value") => &[1],
        ("timestamp", "date") => &[3],
        _ => return None,
    })
}

const NAMESPACES: [&str; 3] = ["math", "duration", "timestamp"];

type Scope<'a> = &'a HashMap<String, Arc<FunctionDef>>;

struct Checker<'a> {
    /// Function scopes, outermost first.
    funcs: Vec<Scope<'a>>,
    /// Path variables in scope.
    vars: Vec<String>,
    /// Call edges between functions, by definition address.
    edges: HashMap<usize, Vec<(usize, String, Pos)>>,
    /// Function being checked, if any.
    current: Option<usize>,
}

fn err<T>(pos: Pos, message: String) -> Result<T, RulesError> {
    Err(RulesError::syntax(pos.line, pos.column, message))
}

fn key(f: &Arc<FunctionDef>) -> usize {
    Arc::as_ptr(f) as usize
}

/// Checks a parsed file; see the module docs.
pub(crate) fn check(root: &MatchBlock) -> Result<(), RulesError> {
    let mut c = Checker {
        funcs: Vec::new(),
        vars: Vec::new(),
        edges: HashMap::new(),
        current: None,
    };
    c.block(root)?;
    c.no_cycles()
}

impl<'a> Checker<'a> {
    fn block(&mut self, block: &'a MatchBlock) -> Result<(), RulesError> {
        let saved = self.vars.len();
        for (name, _) in &block.fixed {
            self.vars.push(name.clone());
        }
        for seg in &block.path {
            match seg {
                MatchSeg::Var(v) | MatchSeg::Rest(v) => self.vars.push(v.clone()),
                MatchSeg::Lit(_) => {}
            }
        }
        self.funcs.push(&block.functions);
        // Sorted for a deterministic first error.
        let mut defs: Vec<&Arc<FunctionDef>> = block.functions.values().collect();
        defs.sort_by_key(|f| (f.body.pos.line, f.body.pos.column));
        for f in defs {
            self.current = Some(key(f));
            let mut locals: Vec<String> = f.params.clone();
            for (name, e) in &f.lets {
                self.expr(e, &locals)?;
                locals.push(name.clone());
            }
            self.expr(&f.body, &locals)?;
            self.current = None;
        }
        for allow in &block.allows {
            if let Some(cond) = &allow.condition {
                self.expr(cond, &[])?;
            }
        }
        for child in &block.children {
            self.block(child)?;
        }
        self.funcs.pop();
        self.vars.truncate(saved);
        Ok(())
    }

    fn bound(&self, name: &str, locals: &[String]) -> bool {
        locals.iter().any(|l| l == name) || self.vars.iter().any(|v| v == name)
    }

    fn find_function(&self, name: &str) -> Option<&'a Arc<FunctionDef>> {
        self.funcs.iter().rev().find_map(|scope| scope.get(name))
    }

    fn expr(&mut self, e: &Expr, locals: &[String]) -> Result<(), RulesError> {
        match &e.kind {
            ExprKind::Null
            | ExprKind::Bool(_)
            | ExprKind::Int(_)
            | ExprKind::Float(_)
            | ExprKind::Str(_) => Ok(()),
            ExprKind::List(items) => items.iter().try_for_each(|i| self.expr(i, locals)),
            ExprKind::Map(entries) => entries.iter().try_for_each(|(_, v)| self.expr(v, locals)),
            ExprKind::Ident(name) => {
                if self.bound(name, locals) || GLOBALS.contains(&name.as_str()) {
                    Ok(())
                } else {
                    err(e.pos, format!("unknown variable {name}"))
                }
            }
            ExprKind::Member(t, _) | ExprKind::Is(t, _) | ExprKind::Unary(_, t) => {
                self.expr(t, locals)
            }
            ExprKind::Index(a, b) | ExprKind::Binary(_, a, b) => {
                self.expr(a, locals)?;
                self.expr(b, locals)
            }
            ExprKind::Slice(a, b, c) | ExprKind::Ternary(a, b, c) => {
                self.expr(a, locals)?;
                self.expr(b, locals)?;
                self.expr(c, locals)
            }
            ExprKind::Path(parts) => parts.iter().try_for_each(|p| match p {
                PathPart::Lit(_) => Ok(()),
                PathPart::Interp(e) => self.expr(e, locals),
            }),
            ExprKind::Call(name, args) => {
                for a in args {
                    self.expr(a, locals)?;
                }
                if let Some(f) = self.find_function(name) {
                    if f.params.len() != args.len() {
                        return err(
                            e.pos,
                            format!(
                                "function {name} takes {} argument(s), not {}",
                                f.params.len(),
                                args.len()
                            ),
                        );
                    }
                    if let Some(from) = self.current {
                        self.edges
                            .entry(from)
                            .or_default()
                            .push((key(f), name.clone(), e.pos));
                    }
                    return Ok(());
                }
                match builtin_arity(name) {
                    Some(arities) if arities.contains(&args.len()) => Ok(()),
                    Some(_) => err(e.pos, format!("wrong number of arguments for {name}()")),
                    None => err(e.pos, format!("unknown function {name}")),
                }
            }
            ExprKind::Method(target, name, args) => {
                for a in args {
                    self.expr(a, locals)?;
                }
                if let ExprKind::Ident(ns) = &target.kind {
                    if NAMESPACES.contains(&ns.as_str()) && !self.bound(ns, locals) {
                        return match namespaced_arity(ns, name) {
                            Some(arities) if arities.contains(&args.len()) => Ok(()),
                            Some(_) => err(
                                e.pos,
                                format!("wrong number of arguments for {ns}.{name}()"),
                            ),
                            None => err(e.pos, format!("unknown function {ns}.{name}")),
                        };
                    }
                }
                self.expr(target, locals)
            }
        }
    }

    /// Depth-first search for a cycle in the call graph.
    fn no_cycles(&self) -> Result<(), RulesError> {
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            Active,
            Done,
        }
        fn visit(
            node: usize,
            edges: &HashMap<usize, Vec<(usize, String, Pos)>>,
            marks: &mut HashMap<usize, Mark>,
        ) -> Result<(), RulesError> {
            marks.insert(node, Mark::Active);
            for (to, name, pos) in edges.get(&node).map(Vec::as_slice).unwrap_or_default() {
                match marks.get(to) {
                    Some(Mark::Active) => {
                        return err(
                            *pos,
                            format!(
                                "call to {name} is recursive; functions cannot call themselves"
                            ),
                        )
                    }
                    Some(Mark::Done) => {}
                    None => visit(*to, edges, marks)?,
                }
            }
            marks.insert(node, Mark::Done);
            Ok(())
        }
        let mut marks = HashMap::new();
        let mut nodes: Vec<&usize> = self.edges.keys().collect();
        nodes.sort();
        for node in nodes {
            if !marks.contains_key(node) {
                visit(*node, &self.edges, &mut marks)?;
            }
        }
        Ok(())
    }
}
