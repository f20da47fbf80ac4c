//! Expected-frame matching and variable substitution, as specified in
//! `sdk-spec/conformance/README.md`.
//!
//! A matcher is plain JSON: scalars and arrays match by equality (arrays
//! element by element, same length), objects match *partially* (every key
//! listed must match; extra keys in the actual frame are fine). An object
//! whose keys are all known operators (`$any`, `$type`, …) is an operator
//! object: every operator in it must hold. An object with a `$` key that is
//! not an operator (Hearth's typed values such as `{"$timestamp": "…"}`) is
//! compared literally.

use std::collections::BTreeMap;

use serde_json::Value as Json;

/// Variables a scenario captured or was given (`${name}` in its text).
pub type Vars = BTreeMap<String, Json>;

const OPERATORS: [&str; 16] = [
    "$any",
    "$type",
    "$absent",
    "$exact",
    "$unordered",
    "$contains",
    "$len",
    "$not",
    "$one_of",
    "$gt",
    "$gte",
    "$lt",
    "$lte",
    "$prefix",
    "$capture",
    "$eq",
];

fn is_operator_object(map: &serde_json::Map<String, Json>) -> bool {
    !map.is_empty() && map.keys().all(|k| OPERATORS.contains(&k.as_str()))
}

/// Replaces `${name}` in every string. A string that is exactly `${name}`
/// becomes the variable's JSON value (so numbers stay numbers); inside a
/// longer string a variable is inserted as text. Unknown variables are errors.
pub fn substitute(value: &Json, vars: &Vars) -> Result<Json, String> {
    Ok(match value {
        Json::String(s) => substitute_str(s, vars)?,
        Json::Array(items) => Json::Array(
            items
                .iter()
                .map(|v| substitute(v, vars))
                .collect::<Result<_, _>>()?,
        ),
        Json::Object(map) => {
            let mut out = serde_json::Map::new();
            for (k, v) in map {
                let key = match substitute_str(k, vars)? {
                    Json::String(s) => s,
                    other => other.to_string(),
                };
                out.insert(key, substitute(v, vars)?);
            }
            Json::Object(out)
        }
        other => other.clone(),
    })
}

fn substitute_str(s: &str, vars: &Vars) -> Result<Json, String> {
    if !s.contains("${") {
        return Ok(Json::String(s.to_string()));
    }
    if let Some(name) = s.strip_prefix("${").and_then(|r| r.strip_suffix('}')) {
        if !name.contains("${") && !name.contains('}') {
            return lookup(vars, name)
                .cloned()
                .ok_or_else(|| format!("unknown variable ${{{name}}}"));
        }
    }
    let mut out = String::new();
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unterminated variable in {s:?}"))?;
        let name = &after[..end];
        let value = lookup(vars, name).ok_or_else(|| format!("unknown variable ${{{name}}}"))?;
        match value {
            Json::String(v) => out.push_str(v),
            other => out.push_str(&other.to_string()),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(Json::String(out))
}

/// `name` or `name.field.0.field`: a variable, then object keys and array indices.
fn lookup<'v>(vars: &'v Vars, name: &str) -> Option<&'v Json> {
    let mut parts = name.split('.');
    let mut value = vars.get(parts.next()?)?;
    for part in parts {
        value = match value {
            Json::Object(map) => map.get(part)?,
            Json::Array(items) => items.get(part.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(value)
}

fn type_name(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "boolean",
        Json::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Json::Number(_) => "number",
        Json::String(_) => "string",
        Json::Array(_) => "array",
        Json::Object(_) => "object",
    }
}

fn numbers_equal(a: &serde_json::Number, b: &serde_json::Number) -> bool {
    match (a.as_i64(), b.as_i64(), a.as_u64(), b.as_u64()) {
        (Some(x), Some(y), _, _) => x == y,
        (_, _, Some(x), Some(y)) => x == y,
        _ => a.as_f64() == b.as_f64() && a.is_f64() == b.is_f64(),
    }
}

/// Exact JSON equality (integers and doubles kept apart, as Hearth does).
fn literal_eq(expected: &Json, actual: &Json) -> bool {
    match (expected, actual) {
        (Json::Number(a), Json::Number(b)) => numbers_equal(a, b),
        (Json::Array(a), Json::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| literal_eq(x, y))
        }
        (Json::Object(a), Json::Object(b)) => {
            a.len() == b.len()
                && a.iter()
                    .all(|(k, v)| b.get(k).is_some_and(|w| literal_eq(v, w)))
        }
        _ => expected == actual,
    }
}

/// Matches `actual` (None: the key is missing) against `expected`; captured
/// variables are added to `captures`. On failure returns where and why.
pub fn matches(
    expected: &Json,
    actual: Option<&Json>,
    captures: &mut Vars,
    at: &str,
) -> Result<(), String> {
    match expected {
        Json::Object(map) if is_operator_object(map) => {
            for (op, arg) in map {
                apply_operator(op, arg, actual, captures, at)?;
            }
            Ok(())
        }
        Json::Object(map) if map.keys().any(|k| k.starts_with('$')) => match actual {
            Some(a) if literal_eq(expected, a) => Ok(()),
            _ => Err(format!("{at}: expected {expected}, got {}", show(actual))),
        },
        Json::Object(map) => {
            let Some(Json::Object(actual_map)) = actual else {
                return Err(format!("{at}: expected an object, got {}", show(actual)));
            };
            for (k, v) in map {
                matches(v, actual_map.get(k), captures, &format!("{at}.{k}"))?;
            }
            Ok(())
        }
        Json::Array(items) => {
            let Some(Json::Array(actual_items)) = actual else {
                return Err(format!("{at}: expected an array, got {}", show(actual)));
            };
            if items.len() != actual_items.len() {
                return Err(format!(
                    "{at}: expected {} elements, got {}: {}",
                    items.len(),
                    actual_items.len(),
                    show(actual)
                ));
            }
            for (i, (e, a)) in items.iter().zip(actual_items).enumerate() {
                matches(e, Some(a), captures, &format!("{at}[{i}]"))?;
            }
            Ok(())
        }
        scalar => match actual {
            Some(a) if literal_eq(scalar, a) => Ok(()),
            _ => Err(format!("{at}: expected {scalar}, got {}", show(actual))),
        },
    }
}

fn show(actual: Option<&Json>) -> String {
    match actual {
        None => "nothing (missing)".into(),
        Some(v) => {
            let text = v.to_string();
            if text.len() > 300 {
                format!("{}…", text.chars().take(300).collect::<String>())
            } else {
                text
            }
        }
    }
}

fn number(arg: &Json, op: &str) -> Result<f64, String> {
    arg.as_f64()
        .ok_or_else(|| format!("{op} needs a number, got {arg}"))
}

fn apply_operator(
    op: &str,
    arg: &Json,
    actual: Option<&Json>,
    captures: &mut Vars,
    at: &str,
) -> Result<(), String> {
    let fail = |why: String| Err(format!("{at}: {why}, got {}", show(actual)));
    match op {
        "$any" => match actual {
            Some(_) => Ok(()),
            None => fail("expected a value".into()),
        },
        "$absent" => match (arg.as_bool().unwrap_or(true), actual) {
            (true, None) | (false, Some(_)) => Ok(()),
            (true, Some(_)) => fail("expected no such key".into()),
            (false, None) => fail("expected the key to be present".into()),
        },
        "$type" => {
            let wanted: Vec<&str> = match arg {
                Json::String(s) => vec![s.as_str()],
                Json::Array(list) => list.iter().filter_map(Json::as_str).collect(),
                _ => return Err(format!("{at}: $type takes a name or a list of names")),
            };
            match actual {
                Some(a) => {
                    let t = type_name(a);
                    let ok = wanted
                        .iter()
                        .any(|w| *w == t || (*w == "number" && t == "integer"));
                    if ok {
                        Ok(())
                    } else {
                        fail(format!("expected type {}", wanted.join(" or ")))
                    }
                }
                None => fail(format!("expected type {}", wanted.join(" or "))),
            }
        }
        "$eq" => match actual {
            Some(a) if literal_eq(arg, a) => Ok(()),
            _ => fail(format!("expected exactly {arg}")),
        },
        "$exact" => {
            let (Json::Object(expected), Some(Json::Object(got))) = (arg, actual) else {
                return fail("expected an object with exactly the listed keys".into());
            };
            if let Some(extra) = got.keys().find(|k| !expected.contains_key(*k)) {
                return fail(format!("unexpected key {extra:?}"));
            }
            matches(arg, actual, captures, at)
        }
        "$unordered" | "$contains" => {
            let Json::Array(wanted) = arg else {
                return Err(format!("{at}: {op} takes an array"));
            };
            let Some(Json::Array(got)) = actual else {
                return fail("expected an array".into());
            };
            if op == "$unordered" && wanted.len() != got.len() {
                return fail(format!("expected {} elements in any order", wanted.len()));
            }
            let mut used = vec![false; got.len()];
            if assign(wanted, got, &mut used, captures) {
                Ok(())
            } else {
                fail(format!("no arrangement matches {arg}"))
            }
        }
        "$len" => {
            let n = match actual {
                Some(Json::Array(a)) => a.len(),
                Some(Json::Object(o)) => o.len(),
                Some(Json::String(s)) => s.chars().count(),
                _ => return fail("expected something with a length".into()),
            };
            let mut inner = Vars::new();
            matches(
                arg,
                Some(&Json::from(n)),
                &mut inner,
                &format!("{at} (length)"),
            )
        }
        "$not" => {
            let mut scratch = captures.clone();
            match matches(arg, actual, &mut scratch, at) {
                Ok(()) => fail(format!("expected not {arg}")),
                Err(_) => Ok(()),
            }
        }
        "$one_of" => {
            let Json::Array(options) = arg else {
                return Err(format!("{at}: $one_of takes an array"));
            };
            for option in options {
                let mut scratch = captures.clone();
                if matches(option, actual, &mut scratch, at).is_ok() {
                    *captures = scratch;
                    return Ok(());
                }
            }
            fail(format!("expected one of {arg}"))
        }
        "$gt" | "$gte" | "$lt" | "$lte" => {
            let bound = number(arg, op)?;
            let Some(value) = actual.and_then(Json::as_f64) else {
                return fail("expected a number".into());
            };
            let ok = match op {
                "$gt" => value > bound,
                "$gte" => value >= bound,
                "$lt" => value < bound,
                _ => value <= bound,
            };
            if ok {
                Ok(())
            } else {
                fail(format!("expected {op} {bound}"))
            }
        }
        "$prefix" => {
            let prefix = arg.as_str().unwrap_or_default();
            match actual.and_then(Json::as_str) {
                Some(s) if s.starts_with(prefix) => Ok(()),
                _ => fail(format!("expected a string starting with {prefix:?}")),
            }
        }
        "$capture" => {
            let Some(name) = arg.as_str() else {
                return Err(format!("{at}: $capture takes a variable name"));
            };
            match actual {
                Some(a) => {
                    captures.insert(name.to_string(), a.clone());
                    Ok(())
                }
                None => fail(format!("nothing to capture into {name}")),
            }
        }
        other => Err(format!("{at}: unknown operator {other}")),
    }
}

/// Backtracking assignment of matchers to distinct elements.
fn assign(wanted: &[Json], got: &[Json], used: &mut [bool], captures: &mut Vars) -> bool {
    let Some((first, rest)) = wanted.split_first() else {
        return true;
    };
    for i in 0..got.len() {
        if used[i] {
            continue;
        }
        let mut scratch = captures.clone();
        if matches(first, Some(&got[i]), &mut scratch, "").is_ok() {
            used[i] = true;
            if assign(rest, got, used, &mut scratch) {
                *captures = scratch;
                return true;
            }
            used[i] = false;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ok(expected: Json, actual: Json) -> Vars {
        let mut vars = Vars::new();
        matches(&expected, Some(&actual), &mut vars, "$").unwrap();
        vars
    }

    fn bad(expected: Json, actual: Json) -> String {
        matches(&expected, Some(&actual), &mut Vars::new(), "$").unwrap_err()
    }

    #[test]
    fn objects_match_partially_and_arrays_exactly() {
        ok(
            json!({"type": "welcome"}),
            json!({"type": "welcome", "session_id": "x"}),
        );
        bad(json!({"type": "welcome"}), json!({"type": "error"}));
        ok(json!([1, {"a": 2}]), json!([1, {"a": 2, "b": 3}]));
        assert!(bad(json!([1]), json!([1, 2])).contains("expected 1 elements"));
    }

    #[test]
    fn integers_and_doubles_differ() {
        bad(json!(1), json!(1.0));
        ok(json!(1.5), json!(1.5));
    }

    #[test]
    fn operators_check_types_presence_and_ranges() {
        ok(
            json!({"a": {"$type": "string"}, "b": {"$absent": true}}),
            json!({"a": "x"}),
        );
        bad(json!({"b": {"$absent": true}}), json!({"b": null}));
        ok(json!({"$type": "number"}), json!(3));
        ok(json!({"n": {"$gte": 2, "$lt": 5}}), json!({"n": 4}));
        ok(json!({"$len": 2}), json!([0, 0]));
        ok(json!({"$one_of": ["a", "b"]}), json!("b"));
        ok(json!({"$not": {"$type": "null"}}), json!(0));
        ok(json!({"$prefix": "p"}), json!("p12"));
        bad(json!({"$exact": {"a": 1}}), json!({"a": 1, "b": 2}));
    }

    #[test]
    fn unordered_lists_and_contains_find_a_permutation() {
        ok(
            json!({"$unordered": [{"id": 2}, {"id": 1}]}),
            json!([{"id": 1}, {"id": 2}]),
        );
        bad(
            json!({"$unordered": [{"id": 2}]}),
            json!([{"id": 1}, {"id": 2}]),
        );
        ok(
            json!({"$contains": [{"id": 2}]}),
            json!([{"id": 1}, {"id": 2}]),
        );
    }

    #[test]
    fn typed_hearth_values_compare_literally() {
        ok(
            json!({"t": {"$timestamp": "2024-01-01T00:00:00Z"}}),
            json!({"t": {"$timestamp": "2024-01-01T00:00:00Z"}}),
        );
        bad(
            json!({"t": {"$bytes": "AA=="}}),
            json!({"t": {"$bytes": "AQ=="}}),
        );
    }

    #[test]
    fn captures_and_substitution_round_trip() {
        let vars = ok(
            json!({"resume": {"$capture": "r1"}}),
            json!({"resume": "p7"}),
        );
        let frame = substitute(&json!({"resume": "${r1}", "path": "c/${r1}-x"}), &vars).unwrap();
        assert_eq!(frame, json!({"resume": "p7", "path": "c/p7-x"}));
        let mut vars = Vars::new();
        vars.insert("n".into(), json!(3));
        assert_eq!(substitute(&json!("${n}"), &vars).unwrap(), json!(3));
        assert!(substitute(&json!("${missing}"), &vars).is_err());
        vars.insert("w".into(), json!({"limits": {"max": 4}, "l": [5]}));
        assert_eq!(
            substitute(&json!("${w.limits.max}"), &vars).unwrap(),
            json!(4)
        );
        assert_eq!(substitute(&json!("${w.l.0}"), &vars).unwrap(), json!(5));
    }
}
