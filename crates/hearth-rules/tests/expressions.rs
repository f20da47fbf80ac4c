//! The expression language: every operator, method and builtin, and that
//! errors deny.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use hearth_rules::Principal;

#[test]
fn arithmetic_and_comparison_follow_the_language() {
    for cond in [
        "1 + 2 * 3 == 7",
        "(1 + 2) * 3 == 9",
        "7 / 2 == 3",
        "-7 / 2 == -3",
        "7 % 3 == 1",
        "7.0 / 2 == 3.5",
        "1 == 1.0",
        "1 + 0.5 == 1.5",
        "2.5 * 2 == 5",
        "-5 < 0",
        "3 <= 3 && 3 >= 3 && 4 > 3 && 2 < 3",
        "'a' < 'b'",
        "'a' + 'b' == 'ab'",
        "[1] + [2] == [1, 2]",
        "[1, [2, 3]] == [1, [2, 3]]",
        "{'a': 1, 'b': [2]} == {'b': [2], 'a': 1}",
        "null == null",
        "1 != 'a'",
        "[1, 2] != [2, 1]",
        "!false",
        "-(3) == -3",
        "(true ? 1 : 2) == 1",
        "(false ? 1 : 2) == 2",
        "\"\\u0041\\n\" == 'A\\n'",
        "'it\\'s' == \"it's\"",
        "1e3 == 1000",
        "-9223372036854775807 - 1 < 0",
    ] {
        assert_allows(cond);
    }
    for cond in [
        "1 == 2",
        "'a' == 'b'",
        "1 > 2",
        "[1] == [1, 2]",
        "null == false",
        "0 == false",
    ] {
        assert_denies(cond);
    }
}

#[test]
fn evaluation_errors_deny() {
    for cond in [
        "1 / 0 == 0",
        "1 % 0 == 0",
        "9223372036854775807 + 1 > 0",
        "-9223372036854775807 - 2 < 0",
        "9223372036854775807 * 2 > 0",
        "'a' < 1",
        "1 + 'a' == 1",
        "!1",
        "1",
        "'true'",
        "null",
        "resource.data.missing == 1",
        "resource.data.n.x == 1",
        "resource.data.tags[5] == 'a'",
        "resource.data.tags[-1] == 'a'",
        "resource.data.s.noSuchMethod()",
        "(1 == 1 ? 'x' : 'y')",
        "1 ? true : false",
        "1 in 2",
    ] {
        assert_errors(cond);
    }
}

#[test]
fn and_or_absorb_errors_like_firestore() {
    // error || true is true, error && false is false, in either order.
    assert_allows("resource.data.missing == 1 || true");
    assert_allows("true || resource.data.missing == 1");
    assert_denies("resource.data.missing == 1 && false");
    assert_denies("false && resource.data.missing == 1");
    // Otherwise the error stands.
    assert_errors("resource.data.missing == 1 || false");
    assert_errors("resource.data.missing == 1 && true");
    // Short-circuit: the right side is not evaluated.
    assert_allows("true || (1 / 0 == 1)");
    assert_denies("false && (1 / 0 == 1)");
}

#[test]
fn in_and_is_test_membership_and_types() {
    for cond in [
        "'a' in resource.data.tags",
        "!('c' in resource.data.tags)",
        "'x' in resource.data.m",
        "!('z' in resource.data.m)",
        "'a' in ['a', 'b'].toSet()",
        "1 in [1.0]",
        "resource.data.s is string",
        "resource.data.n is int && resource.data.n is number",
        "resource.data.f is float && resource.data.f is number",
        "resource.data.tags is list",
        "resource.data.m is map",
        "resource.data.ts is timestamp",
        "resource.data.nothing is null",
        "true is bool",
        "resource.__name__ is path",
        "request.time is timestamp",
        "duration.value(1, 's') is duration",
        "['a'].toSet() is set",
        "!(resource.data.n is string)",
        "!(resource.data.n is float)",
    ] {
        assert_allows(cond);
    }
}

#[test]
fn string_methods_work() {
    for cond in [
        "resource.data.s.size() == 5",
        "'héllo'.size() == 5",
        "resource.data.s.lower() == 'hello'",
        "resource.data.s.upper() == 'HELLO'",
        "'  x '.trim() == 'x'",
        "'a,b,,c'.split(',') == ['a', 'b', '', 'c']",
        "'a1b22c'.replace('[0-9]+', '-') == 'a-b-c'",
        "'alice@example.com'.matches('.*@example[.]com')",
        // matches() is a full match, as in Firestore.
        "!'xalice@example.comx'.matches('alice@example[.]com')",
        "'abc'.toUtf8().size() == 3",
    ] {
        assert_allows(cond);
    }
    assert_errors("'x'.matches('(')");
    assert_errors("'x'.split(1)");
}

#[test]
fn list_methods_work() {
    for cond in [
        "resource.data.tags.size() == 2",
        "resource.data.tags.hasAny(['b', 'z'])",
        "!resource.data.tags.hasAny(['y', 'z'])",
        "resource.data.tags.hasAll(['a', 'b'])",
        "!resource.data.tags.hasAll(['a', 'c'])",
        "resource.data.tags.hasOnly(['a', 'b', 'c'])",
        "!resource.data.tags.hasOnly(['a'])",
        "resource.data.tags.join('-') == 'a-b'",
        "resource.data.tags.concat(['c']) == ['a', 'b', 'c']",
        "resource.data.tags + ['c'] == ['a', 'b', 'c']",
        "['a', 'b', 'a', 'c'].removeAll(['a']) == ['b', 'c']",
        "['a', 'a', 'b'].toSet().size() == 2",
        "['a', 'a', 'b'].toSet() == ['b', 'a'].toSet()",
        "resource.data.tags[0] == 'a'",
        "[].size() == 0",
    ] {
        assert_allows(cond);
    }
    assert_errors("[1, 2].join(',') == '1,2'");
}

#[test]
fn map_methods_and_diff_work() {
    for cond in [
        "resource.data.m.size() == 2",
        "resource.data.keys().hasAll(['n', 's', 'tags'])",
        "resource.data.m.keys() == ['x', 'y']",
        "resource.data.m.values()[0] == 1",
        "resource.data.m.get('x', 0) == 1",
        "resource.data.m.get('nope', 7) == 7",
        "resource.data.m.get(['y', 'z'], 0) == 2",
        "resource.data.m.get(['y', 'q'], 'd') == 'd'",
        "resource.data['s'] == 'Hello'",
        "resource.data.m.y.z == 2",
    ] {
        assert_allows(cond);
    }
    let diff = "{'a': 1, 'b': 2, 'c': 3}.diff({'b': 2, 'c': 4, 'd': 5})";
    assert_allows(&format!("{diff}.addedKeys() == ['a'].toSet()"));
    assert_allows(&format!("{diff}.removedKeys() == ['d'].toSet()"));
    assert_allows(&format!("{diff}.changedKeys() == ['c'].toSet()"));
    assert_allows(&format!("{diff}.unchangedKeys() == ['b'].toSet()"));
    assert_allows(&format!("{diff}.affectedKeys() == ['a', 'c', 'd'].toSet()"));
    assert_allows(&format!(
        "{diff}.affectedKeys().hasOnly(['a', 'c', 'd', 'e'])"
    ));
    assert_allows(&format!("{diff}.affectedKeys().hasAny(['a'])"));
}

#[test]
fn set_methods_work() {
    for cond in [
        "['a', 'b'].toSet().union(['b', 'c'].toSet()) == ['a', 'b', 'c'].toSet()",
        "['a', 'b'].toSet().intersection(['b', 'c'].toSet()) == ['b'].toSet()",
        "['a', 'b'].toSet().difference(['b', 'c'].toSet()) == ['a'].toSet()",
        "['a', 'b'].toSet().hasAll(['a'])",
        "['a', 'b'].toSet().hasOnly(['a', 'b', 'c'])",
        "['a', 'b'].toSet().hasAny(['c', 'b'])",
        "['a', 'b'].toSet().size() == 2",
    ] {
        assert_allows(cond);
    }
}

#[test]
fn numeric_conversions_math_time_and_durations_work() {
    for cond in [
        "math.abs(-3) == 3",
        "math.abs(-2.5) == 2.5",
        "math.floor(2.7) == 2",
        "math.ceil(2.1) == 3",
        "math.round(2.5) == 3",
        "math.sqrt(16) == 4",
        "math.isNaN(float('NaN'))",
        "int('42') == 42",
        "int(2.9) == 2",
        "float(1) == 1.0",
        "float('2.5') == 2.5",
        "string(42) == '42'",
        "string(true) == 'true'",
        "string(null) == 'null'",
        "request.time + duration.value(1, 'h') > request.time",
        "request.time - duration.value(2, 'd') < request.time",
        "request.time - resource.data.ts > duration.value(30, 'd')",
        "duration.value(90, 'm') == duration.time(1, 30, 0, 0)",
        "duration.value(2, 's').seconds() == 2",
        "timestamp.value(1500).toMillis() == 1500",
        // ts is 2024-05-01T12:00:00Z, a Wednesday.
        "resource.data.ts.toMillis() == 1714564800000",
        "resource.data.ts.year() == 2024 && resource.data.ts.month() == 5 && resource.data.ts.day() == 1",
        "resource.data.ts.hours() == 12 && resource.data.ts.minutes() == 0 && resource.data.ts.seconds() == 0",
        "resource.data.ts.dayOfWeek() == 3",
        "resource.data.ts.dayOfYear() == 122",
        "resource.data.ts.date() == timestamp.date(2024, 5, 1)",
        "resource.data.ts.time() == duration.value(12, 'h')",
        "timestamp.date(2000, 2, 29).dayOfYear() == 60",
        "timestamp.date(1969, 12, 31).year() == 1969",
        "[1, 2, 3, 4][1:3] == [2, 3]",
        "resource.data.tags[0:0] == []",
        "resource.data.ts < request.time",
    ] {
        assert_allows(cond);
    }
    assert_errors("int('forty') == 40");
    assert_errors("[1, 2][1:5] == [2]");
    assert_errors("[1, 2][2:1] == []");
    assert_errors("timestamp.date(2024, 13, 1) == request.time");
    // Output-size bombs are refused before any allocation: an empty pattern
    // would put the 3000-byte replacement between each of 3000 characters.
    let s = "x".repeat(3000);
    assert_errors(&format!("'{s}'.replace('', '{s}') == ''"));
    let items = vec!["'x'"; 3000].join(", ");
    let e = eval(&format!("[{items}].join('{s}') == ''"));
    assert!(
        !e.allowed && e.errors.iter().any(|m| m.contains("budget")),
        "join bomb not refused"
    );
    assert_errors("duration.value(1, 'fortnight') > duration.value(0, 's')");
}

#[test]
fn request_auth_exposes_uid_and_token_claims() {
    for cond in [
        "request.auth != null",
        "request.auth.uid == 'alice'",
        "request.auth.token.email == 'alice@example.com'",
        "request.auth.token.email_verified",
        "request.auth.token.sign_in_provider == 'password'",
        "request.auth.token.firebase.sign_in_provider == 'password'",
        "request.auth.token.role == 'editor'",
        "request.auth.token.sub == 'alice'",
        "request.method == 'get'",
        "request.path == /things/t1",
    ] {
        assert_allows(cond);
    }
    let anon = Principal::Unauthenticated;
    assert!(eval_as(&anon, "request.auth == null").allowed);
    let e = eval_as(&anon, "request.auth.uid == 'alice'");
    assert!(!e.allowed && !e.errors.is_empty());
}

#[test]
fn resource_and_path_variables_are_visible() {
    for cond in [
        "resource.id == 't1'",
        "resource.__name__ == /databases/$(database)/documents/things/t1",
        "resource.__name__ == /things/t1",
        "resource.__name__ == /things/$(id)",
        "coll == 'things' && id == 't1'",
        "database == '(default)'",
        "resource.data.owner == request.auth.uid",
        "request.resource == null",
    ] {
        assert_allows(cond);
    }
}

#[test]
fn get_and_exists_read_other_documents() {
    for cond in [
        "get(/databases/$(database)/documents/others/o1).data.v == 1",
        "get(/others/o1).data.v == 1",
        "get(/others/$(resource.data.ref)).data.v == 1",
        "request.auth.uid in get(/others/o1).data.members",
        "exists(/others/o1)",
        "!exists(/others/none)",
        "get(/others/none) == null",
        "getAfter(/others/o1).data.v == 1",
        "existsAfter(/others/o1)",
        "get(path('others/o1')).id == 'o1'",
    ] {
        assert_allows(cond);
    }
    // A string interpolated into a path is one segment: a value with '/'
    // cannot point get() at another document.
    assert_errors("get(/others/$(resource.data.bad_ref)).data.v == 1");
    // System documents are invisible to rules.
    assert_allows("!exists(/__users__/alice)");
    // get() of a collection path is an error.
    assert_errors("exists(/others)");
}

#[test]
fn get_calls_are_bounded_per_evaluation() {
    let reads = |n: usize| {
        (0..n)
            .map(|i| format!("exists(/many/d{i})"))
            .collect::<Vec<_>>()
            .join(" && ")
    };
    assert_allows(&reads(20));
    let e = eval(&reads(21));
    assert!(!e.allowed);
    assert!(
        e.errors.iter().any(|m| m.contains("get()/exists()")),
        "{:?}",
        e.errors
    );
    // Reading the same document again is free.
    let same = vec!["exists(/many/d1)"; 100].join(" && ");
    assert_allows(&same);
}

#[test]
fn functions_take_arguments_and_let_bindings() {
    let rules = hearth_rules::Ruleset::parse(
        r#"
        function double(x) { return x * 2; }
        function isOwner(uid) {
          let owner = resource.data.owner;
          let same = owner == uid;
          return same;
        }
        match /things/{id} {
          function quad(x) { return double(double(x)); }
          allow get: if quad(resource.data.n) == 20 && isOwner(request.auth.uid);
          match /sub/{s} {
            allow get: if quad(1) == 4;
          }
        }
        "#,
    )
    .unwrap();
    let check = |path: &str| {
        let d = doc(path, serde_json::json!({"n": 5, "owner": "alice"}));
        rules.evaluate(
            &hearth_rules::RuleRequest {
                principal: &alice(),
                method: hearth_rules::Method::Get,
                path: &d.path,
                resource: Some(&d),
                new_data: None,
                time: hearth_protocol::Timestamp(0),
            },
            &lookup(),
        )
    };
    assert!(check("things/t1").allowed);
    // Functions of an enclosing block are visible in nested blocks...
    assert!(check("things/t1/sub/s1").allowed);
}

#[test]
fn mistakes_in_names_and_calls_fail_at_load_time_with_their_position() {
    let err = |text: &str| {
        let e = hearth_rules::Ruleset::parse(text).unwrap_err();
        (
            e.line().unwrap(),
            e.column().unwrap(),
            e.message().to_string(),
        )
    };
    assert_eq!(
        err("match /a/{b} {\n  allow get: if requst.auth != null;\n}"),
        (2, 17, "unknown variable requst".to_string())
    );
    assert_eq!(
        err("match /a/{b} { allow get: if isOwner(); }"),
        (1, 30, "unknown function isOwner".to_string())
    );
    // Functions of sibling blocks are not visible.
    let (_, _, m) = err("match /x/{id} { function quad(x) { return x * 4; } }\nmatch /y/{id} { allow get: if quad(1) == 4; }");
    assert_eq!(m, "unknown function quad");
    // Path variables are lexically scoped: a top-level function cannot see roomId.
    let (_, _, m) =
        err("function f() { return roomId == 'x'; }\nmatch /rooms/{roomId} { allow get: if f(); }");
    assert_eq!(m, "unknown variable roomId");
    let (_, _, m) =
        err("function f(a, b) { return a == b; }\nmatch /a/{b} { allow get: if f(1); }");
    assert!(m.contains("takes 2 argument(s), not 1"), "{m}");
    let (_, _, m) = err("match /a/{b} { allow get: if math.cube(2) == 8; }");
    assert_eq!(m, "unknown function math.cube");
    let (_, _, m) = err("match /a/{b} { allow get: if exists(/a/b, 1); }");
    assert!(m.contains("wrong number of arguments"), "{m}");
    let (_, _, m) =
        err("function f(x) { let y = z; return y; }\nmatch /a/{b} { allow get: if f(1); }");
    assert_eq!(m, "unknown variable z");
    // A let sees earlier lets and the parameters.
    assert!(
        hearth_rules::Ruleset::parse("function f(x) { let y = x; let z = y; return z; }").is_ok()
    );
}

#[test]
fn recursion_is_refused_at_load_time() {
    for text in [
        "function f(x) { return f(x); }\nmatch /a/{b} { allow get: if f(1); }",
        "function g(x) { return h(x); }\nfunction h(x) { return g(x); }\nmatch /a/{b} { allow get: if g(1); }",
        "match /a/{b} { function g(x) { return x && h(x); } function h(x) { return g(x); } allow get: if g(true); }",
    ] {
        let e = hearth_rules::Ruleset::parse(text).unwrap_err();
        assert!(e.message().contains("recursive"), "{e}");
    }
}

#[test]
fn exponential_rules_run_out_of_budget_quickly() {
    // f18 would call f0 2^18 times.
    let mut text = String::from("function f0(x) { return x == 1; }\n");
    for i in 1..=18 {
        text.push_str(&format!(
            "function f{i}(x) {{ return f{p}(x) && f{p}(x); }}\n",
            p = i - 1
        ));
    }
    text.push_str("match /a/{b} { allow get: if f18(1); }");
    let rules = hearth_rules::Ruleset::parse(&text).unwrap();
    let d = doc("a/b", serde_json::json!({}));
    let started = Instant::now();
    let e = rules.evaluate(
        &hearth_rules::RuleRequest {
            principal: &alice(),
            method: hearth_rules::Method::Get,
            path: &d.path,
            resource: Some(&d),
            new_data: None,
            time: hearth_protocol::Timestamp(0),
        },
        &lookup(),
    );
    assert!(!e.allowed);
    assert!(e.errors[0].contains("budget"), "{:?}", e.errors);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn bulk_operations_on_large_lists_are_charged_to_the_budget() {
    let big: Vec<String> = (0..2000).map(|i| format!("'{i}'")).collect();
    let list = format!("[{}]", big.join(", "));
    // 2000 x 2000 comparisons exceed the budget: denied, and fast.
    let started = Instant::now();
    assert_errors(&format!("{list}.hasAll({list})"));
    assert!(started.elapsed() < Duration::from_secs(5));
}

fn eval_nested_calls(levels: usize, nots: usize, stack: usize) -> hearth_rules::Evaluation {
    let nots = "!".repeat(nots);
    let mut text = String::from("function f0(x) { return x == 1; }\n");
    for i in 1..levels {
        text.push_str(&format!(
            "function f{i}(x) {{ return {nots}f{p}(x); }}\n",
            p = i - 1
        ));
    }
    text.push_str(&format!(
        "match /a/{{b}} {{ allow get: if f{}(1); }}",
        levels - 1
    ));
    let rules = hearth_rules::Ruleset::parse(&text).unwrap();
    std::thread::Builder::new()
        .stack_size(stack)
        .spawn(move || {
            let d = doc("a/b", serde_json::json!({}));
            rules.evaluate(
                &hearth_rules::RuleRequest {
                    principal: &alice(),
                    method: hearth_rules::Method::Get,
                    path: &d.path,
                    resource: Some(&d),
                    new_data: None,
                    time: hearth_protocol::Timestamp(0),
                },
                &lookup(),
            )
        })
        .unwrap()
        .join()
        .unwrap()
}

#[test]
fn nesting_across_calls_is_bounded_so_the_stack_is_too() {
    // Twenty nested calls each nested 56 deep would need over a thousand
    // frames: refused with an error, on a 2 MiB stack (tokio's worker
    // default), in a debug build.
    let e = eval_nested_calls(20, 56, 2 * 1024 * 1024);
    assert!(!e.allowed);
    assert!(e.errors[0].contains("nested deeper"), "{:?}", e.errors);
    // Just under the limit evaluates fine on the same stack.
    let e = eval_nested_calls(20, 10, 2 * 1024 * 1024);
    assert!(e.allowed, "{:?}", e.errors);
}
