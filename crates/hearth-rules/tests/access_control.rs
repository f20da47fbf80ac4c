//! `match` resolution, the allow/deny decision and `AccessControl`: methods,
//! writes, queries, admin bypass, system collections, default deny.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;

use common::*;
use hearth_protocol::{CollectionPath, DocPath, ErrorCode, FieldPath, Query, Value, Write};
use hearth_rules::{AccessControl, AccessError, MemoryLookup, NoDocuments, Principal, Ruleset};

fn ac(text: &str) -> AccessControl {
    AccessControl::new(Ruleset::parse(text).unwrap())
}

fn path(p: &str) -> DocPath {
    DocPath::parse(p).unwrap()
}

fn can_get(access: &AccessControl, who: &Principal, p: &str) -> bool {
    let d = doc(p, serde_json::json!({"owner": "alice", "public": true}));
    access
        .check_get(who, &d.path, Some(&d), &NoDocuments)
        .is_ok()
}

#[test]
fn nested_matches_and_wildcards_bind_path_variables() {
    let access = ac(r#"
        match /rooms/{roomId} {
          allow get: if roomId == 'r1';
          match /messages/{messageId} {
            allow get: if roomId == 'r1' && messageId.size() == 2;
          }
        }
    "#);
    let alice = alice();
    assert!(can_get(&access, &alice, "rooms/r1"));
    assert!(!can_get(&access, &alice, "rooms/r2"));
    assert!(can_get(&access, &alice, "rooms/r1/messages/m1"));
    assert!(!can_get(&access, &alice, "rooms/r1/messages/m12"));
    // A block's allows apply only to exactly its path, not to deeper ones.
    assert!(!can_get(&access, &alice, "rooms/r1/other/x"));
}

#[test]
fn recursive_wildcards_match_zero_or_more_segments() {
    let access = ac(r#"
        match /docs/{rest=**} {
          allow get: if rest[0] == 'd1' || rest.size() > 2;
        }
        match /pub/{p} {
          match /{all=**} { allow get; }
        }
    "#);
    let alice = alice();
    assert!(can_get(&access, &alice, "docs/d1"));
    assert!(!can_get(&access, &alice, "docs/d2"));
    assert!(can_get(&access, &alice, "docs/d2/sub/s1"));
    // {all=**} under /pub/{p} matches the document itself (zero segments)
    // and everything below it.
    assert!(can_get(&access, &alice, "pub/x"));
    assert!(can_get(&access, &alice, "pub/x/a/b/c/d"));
    assert!(!can_get(&access, &alice, "other/x"));
}

#[test]
fn full_firestore_wrapper_and_bare_matches_mean_the_same() {
    let wrapped = ac(r#"
        rules_version = '2';
        service cloud.firestore {
          match /databases/{database}/documents {
            match /things/{id} { allow get: if resource.data.owner == request.auth.uid; }
          }
        }
    "#);
    let bare = ac("match /things/{id} { allow get: if resource.data.owner == request.auth.uid; }");
    for access in [wrapped, bare] {
        assert!(can_get(&access, &alice(), "things/t1"));
        assert!(!can_get(&access, &Principal::user("bob"), "things/t1"));
    }
}

#[test]
fn read_means_get_and_list_and_write_means_create_update_delete() {
    let read = ac("match /a/{b} { allow read; }");
    let get_only = ac("match /a/{b} { allow get; }");
    let write = ac("match /a/{b} { allow write; }");
    let create_only = ac("match /a/{b} { allow create: if true; }");
    let alice = alice();
    let d = doc("a/b", serde_json::json!({"x": 1}));
    let list = |access: &AccessControl| {
        !access
            .filter_list(&alice, vec![d.clone()], &NoDocuments)
            .is_empty()
    };
    let create = Write::create(path("a/b"), fields(serde_json::json!({"x": 1})));
    let delete = Write::delete(path("a/b"));
    let new = fields(serde_json::json!({"x": 1}));

    assert!(can_get(&read, &alice, "a/b") && list(&read));
    assert!(can_get(&get_only, &alice, "a/b") && !list(&get_only));
    assert!(read
        .check_write(&alice, &create, None, Some(&new), &NoDocuments)
        .is_err());

    assert!(write
        .check_write(&alice, &create, None, Some(&new), &NoDocuments)
        .is_ok());
    assert!(write
        .check_write(&alice, &delete, Some(&d), None, &NoDocuments)
        .is_ok());
    assert!(!can_get(&write, &alice, "a/b"));

    assert!(create_only
        .check_write(&alice, &create, None, Some(&new), &NoDocuments)
        .is_ok());
    assert!(create_only
        .check_write(&alice, &delete, Some(&d), None, &NoDocuments)
        .is_err());
}

#[test]
fn several_matching_allows_are_ored_and_no_match_denies() {
    let access = ac(r#"
        match /a/{b} { allow get: if b == 'one'; }
        match /a/{b} { allow get: if b == 'two'; }
        match /{coll}/{id} { allow get: if coll == 'c'; }
    "#);
    let alice = alice();
    assert!(can_get(&access, &alice, "a/one"));
    assert!(can_get(&access, &alice, "a/two"));
    assert!(!can_get(&access, &alice, "a/three"));
    assert!(can_get(&access, &alice, "c/anything"));
    assert!(!can_get(&access, &alice, "z/nothing"));
}

#[test]
fn writes_map_to_create_update_delete_by_existence() {
    let access = ac(r#"
        match /w/{id} {
          allow create: if request.resource.data.kind == 'create' && resource == null;
          allow update: if request.resource.data.kind == 'update' && resource.data.kind != null;
          allow delete: if resource.data.kind == 'old' && request.resource == null;
        }
    "#);
    let alice = alice();
    let existing = doc("w/1", serde_json::json!({"kind": "old"}));
    let as_create = fields(serde_json::json!({"kind": "create"}));
    let as_update = fields(serde_json::json!({"kind": "update"}));
    let p = path("w/1");
    let mut merge_fields = BTreeMap::new();
    merge_fields.insert(FieldPath::parse("kind").unwrap(), Value::from("update"));

    // Set: create when missing, update when present.
    let set = Write::set(p.clone(), as_create.clone());
    assert!(access
        .check_write(&alice, &set, None, Some(&as_create), &NoDocuments)
        .is_ok());
    assert!(access
        .check_write(
            &alice,
            &set,
            Some(&existing),
            Some(&as_create),
            &NoDocuments
        )
        .is_err());
    let set_u = Write::set(p.clone(), as_update.clone());
    assert!(access
        .check_write(
            &alice,
            &set_u,
            Some(&existing),
            Some(&as_update),
            &NoDocuments
        )
        .is_ok());
    // Merge likewise.
    let merge = Write::merge(p.clone(), merge_fields.clone());
    assert!(access
        .check_write(
            &alice,
            &merge,
            Some(&existing),
            Some(&as_update),
            &NoDocuments
        )
        .is_ok());
    assert!(access
        .check_write(&alice, &merge, None, Some(&as_update), &NoDocuments)
        .is_err());
    // Create is always create; Update always update.
    let create = Write::create(p.clone(), as_create.clone());
    assert!(access
        .check_write(&alice, &create, None, Some(&as_create), &NoDocuments)
        .is_ok());
    let update = Write::update(p.clone(), merge_fields);
    assert!(access
        .check_write(
            &alice,
            &update,
            Some(&existing),
            Some(&as_update),
            &NoDocuments
        )
        .is_ok());
    // Delete sees the stored document and no request.resource.
    let delete = Write::delete(p.clone());
    assert!(access
        .check_write(&alice, &delete, Some(&existing), None, &NoDocuments)
        .is_ok());
    let err = access
        .check_write(&alice, &delete, None, None, &NoDocuments)
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::PermissionDenied);
}

#[test]
fn get_after_sees_the_request_own_post_state() {
    let access = ac(r#"
        match /w/{id} {
          allow create: if getAfter(/databases/$(database)/documents/w/$(id)).data.n == 2;
          allow delete: if !existsAfter(/w/$(id)) && exists(/w/$(id));
        }
    "#);
    let alice = alice();
    let n2 = fields(serde_json::json!({"n": 2}));
    let n3 = fields(serde_json::json!({"n": 3}));
    let create = Write::create(path("w/1"), n2.clone());
    assert!(access
        .check_write(&alice, &create, None, Some(&n2), &NoDocuments)
        .is_ok());
    assert!(access
        .check_write(&alice, &create, None, Some(&n3), &NoDocuments)
        .is_err());
    let existing = doc("w/1", serde_json::json!({"n": 1}));
    let mut lookup = MemoryLookup::new();
    lookup.insert(existing.clone());
    let delete = Write::delete(path("w/1"));
    assert!(access
        .check_write(&alice, &delete, Some(&existing), None, &lookup)
        .is_ok());
}

#[test]
fn admin_bypasses_rules_but_users_never_reach_system_collections() {
    let deny = AccessControl::deny_all();
    let open = AccessControl::allow_all();
    let explicit = ac(
        "match /{document=**} { allow read, write; }\nmatch /__users__/{u} { allow read, write; }",
    );
    let system_doc = doc("__users__/alice", serde_json::json!({"email": "a@x"}));
    let nested_system = doc("rooms/r1/__meta__/m", serde_json::json!({}));
    for access in [&deny, &open, &explicit] {
        assert!(access
            .check_get(
                &Principal::Admin,
                &system_doc.path,
                Some(&system_doc),
                &NoDocuments
            )
            .is_ok());
        for who in [alice(), Principal::Unauthenticated] {
            for d in [&system_doc, &nested_system] {
                let err = access
                    .check_get(&who, &d.path, Some(d), &NoDocuments)
                    .unwrap_err();
                assert!(matches!(err, AccessError::PermissionDenied(_)));
                assert!(!access.can_read_doc(&who, d, &NoDocuments));
                assert!(access
                    .filter_list(&who, vec![d.clone()], &NoDocuments)
                    .is_empty());
                let w = Write::set(d.path.clone(), fields(serde_json::json!({})));
                assert!(access
                    .check_write(&who, &w, None, Some(&Default::default()), &NoDocuments)
                    .is_err());
            }
            let q = Query::collection(CollectionPath::parse("__users__").unwrap());
            assert!(access.check_list(&who, &q, &NoDocuments).is_err());
            let g = Query::collection_group("__sessions__");
            assert!(access.check_list(&who, &g, &NoDocuments).is_err());
        }
    }
    // Admin passes deny_all for ordinary documents too.
    let w = Write::delete(path("rooms/r1"));
    assert!(deny
        .check_write(&Principal::Admin, &w, None, None, &NoDocuments)
        .is_ok());
}

#[test]
fn no_rules_file_denies_everything_by_default() {
    let access = AccessControl::deny_all();
    let d = doc("rooms/r1", serde_json::json!({}));
    for who in [alice(), Principal::Unauthenticated] {
        assert!(access
            .check_get(&who, &d.path, Some(&d), &NoDocuments)
            .is_err());
        let q = Query::collection(CollectionPath::parse("rooms").unwrap());
        assert!(access.check_list(&who, &q, &NoDocuments).is_err());
        assert!(!access.can_read_doc(&who, &d, &NoDocuments));
    }
    let missing = std::path::Path::new("/nonexistent/hearth.rules");
    let rules = hearth_rules::RulesFile::load(missing).unwrap();
    let access = AccessControl::new(rules);
    assert!(access
        .check_get(&alice(), &d.path, Some(&d), &NoDocuments)
        .is_err());
}

#[test]
fn queries_are_refused_when_no_list_rule_can_match_and_filtered_per_document_otherwise() {
    let access = ac(r#"
        match /posts/{id} {
          allow list: if resource.data.public == true || resource.data.owner == request.auth.uid;
        }
        match /members/{id} {
          allow list: if request.auth != null;
        }
        match /open/{id} { allow read; }
        match /gets/{id} { allow get; }
    "#);
    let alice = alice();
    let anon = Principal::Unauthenticated;
    let q = |c: &str| Query::collection(CollectionPath::parse(c).unwrap());

    // No list rule matches at all.
    let err = access
        .check_list(&alice, &q("secrets"), &NoDocuments)
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::PermissionDenied);
    assert!(access.check_list(&alice, &q("gets"), &NoDocuments).is_err());
    // The list rule is false whatever the document for an anonymous caller.
    assert!(access
        .check_list(&anon, &q("members"), &NoDocuments)
        .is_err());
    assert!(access
        .check_list(&alice, &q("members"), &NoDocuments)
        .is_ok());
    // Depends on the document: allowed, and results are filtered.
    assert!(access.check_list(&alice, &q("posts"), &NoDocuments).is_ok());
    assert!(access.check_list(&anon, &q("posts"), &NoDocuments).is_ok());
    let docs = vec![
        doc(
            "posts/1",
            serde_json::json!({"public": true, "owner": "bob"}),
        ),
        doc(
            "posts/2",
            serde_json::json!({"public": false, "owner": "bob"}),
        ),
        doc(
            "posts/3",
            serde_json::json!({"public": false, "owner": "alice"}),
        ),
        doc("posts/4", serde_json::json!({"owner": "carol"})),
    ];
    let ids = |v: Vec<hearth_protocol::Document>| {
        v.into_iter()
            .map(|d| d.path.id().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ids(access.filter_list(&alice, docs.clone(), &NoDocuments)),
        ["1", "3"]
    );
    assert_eq!(
        ids(access.filter_list(&anon, docs.clone(), &NoDocuments)),
        ["1"]
    );
    assert_eq!(
        ids(access.filter_list(&Principal::Admin, docs.clone(), &NoDocuments)),
        ["1", "2", "3", "4"]
    );
    // Live queries: a document that stops being readable must be removed.
    assert!(access.can_read_doc(&alice, &docs[2], &NoDocuments));
    let changed = doc(
        "posts/3",
        serde_json::json!({"public": false, "owner": "bob"}),
    );
    assert!(!access.can_read_doc(&alice, &changed, &NoDocuments));
    // Collection groups are filtered per document.
    assert!(access
        .check_list(&alice, &Query::collection_group("posts"), &NoDocuments)
        .is_ok());
    assert!(access.check_list(&alice, &q("open"), &NoDocuments).is_ok());
}

#[test]
fn rules_that_depend_on_the_document_id_are_decided_per_document() {
    let access = ac("match /u/{uid} { allow list: if uid == request.auth.uid; }");
    let q = Query::collection(CollectionPath::parse("u").unwrap());
    assert!(access.check_list(&alice(), &q, &NoDocuments).is_ok());
    let docs = vec![
        doc("u/alice", serde_json::json!({})),
        doc("u/bob", serde_json::json!({})),
    ];
    let kept = access.filter_list(&alice(), docs, &NoDocuments);
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].path.id(), "alice");
}

#[test]
fn replacing_rules_is_seen_by_every_clone() {
    let access = AccessControl::deny_all();
    let other = access.clone();
    assert!(!can_get(&other, &alice(), "a/b"));
    access.replace(Ruleset::parse("match /a/{b} { allow get; }").unwrap());
    assert!(can_get(&other, &alice(), "a/b"));
}

#[test]
fn access_errors_map_to_error_codes() {
    assert_eq!(
        AccessError::PermissionDenied("x".into()).code(),
        ErrorCode::PermissionDenied
    );
    assert_eq!(
        AccessError::Unauthenticated("x".into()).code(),
        ErrorCode::Unauthenticated
    );
    let err = Ruleset::parse("match /a { allow read: if }").unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidArgument);
    assert_eq!((err.line(), err.column()), (Some(1), Some(27)));
    assert_eq!(
        err.to_string(),
        "rules:1:27: expected an expression, found '}'"
    );
}

#[test]
fn typical_get_rule_for_benchmarks_is_allowed() {
    let case = hearth_rules::bench_support::TypicalGetRule::new();
    assert!(case.check_once());
    // Rough cost, printed for the record (not asserted: machines vary).
    let started = std::time::Instant::now();
    let n = 2000;
    for _ in 0..n {
        assert!(case.check_once());
    }
    eprintln!(
        "typical rule with one get(): {:?} per check (unoptimized unless --release)",
        started.elapsed() / n
    );
}

#[test]
fn recursive_wildcards_in_the_middle_match_collection_groups() {
    let access = ac(r#"
        rules_version = '2';
        service cloud.firestore {
          match /databases/{database}/documents {
            match /{path=**}/posts/{post} {
              allow get: if post != 'secret' && (path.size() == 0 || path == /users/u1);
            }
          }
        }
    "#);
    let alice = alice();
    assert!(can_get(&access, &alice, "posts/p1"));
    assert!(can_get(&access, &alice, "users/u1/posts/p1"));
    assert!(!can_get(&access, &alice, "users/u2/posts/p1"));
    assert!(!can_get(&access, &alice, "users/u1/posts/secret"));
    assert!(!can_get(&access, &alice, "users/u1/comments/c1"));
}

#[test]
fn matching_work_is_bounded_for_nested_middle_wildcards() {
    // Ten nested blocks each with a middle wildcard, against a long path of
    // identical segments, would try exponentially many splits.
    let mut text = String::new();
    for i in 0..10 {
        text.push_str(&format!("match /{{w{i}=**}}/x/x {{ "));
    }
    text.push_str("allow get: if false;");
    text.push_str(&" }".repeat(10));
    let access = ac(&text);
    let long = vec!["x"; 60].join("/");
    let started = std::time::Instant::now();
    assert!(!can_get(&access, &alice(), &long));
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

#[test]
fn access_control_and_rulesets_can_be_shared_across_threads() {
    fn shareable<T: Send + Sync + Clone + 'static>() {}
    shareable::<AccessControl>();
    shareable::<Ruleset>();
    shareable::<Principal>();
    // A check from another thread sees the same rules.
    let access = ac("match /a/{b} { allow get; }");
    let other = access.clone();
    let ok = std::thread::spawn(move || can_get(&other, &alice(), "a/b"))
        .join()
        .unwrap();
    assert!(ok);
}

mod authorize_writes {
    use super::*;
    use hearth_protocol::{Document, Precondition, Timestamp};
    use hearth_rules::WriteRefusal;

    const OWNER_ONLY: &str = r#"
        match /notes/{uid}/items/{id} {
          allow read, write: if request.auth != null && request.auth.uid == uid;
        }
        match /counters/{id} {
          allow create: if request.resource.data.n == 0;
          allow update: if request.resource.data.n == resource.data.n + 1;
        }
    "#;

    fn run(
        access: &AccessControl,
        who: &Principal,
        stored: &[Document],
        writes: &[Write],
    ) -> Result<(), WriteRefusal> {
        let mut load = |p: &DocPath| Ok(stored.iter().find(|d| &d.path == p).cloned());
        access.authorize_writes(who, writes, Timestamp(1), &mut load, &NoDocuments)
    }

    fn data(json: serde_json::Value) -> hearth_protocol::Map {
        common::fields(json)
    }

    #[test]
    fn existence_errors_are_reported_only_to_callers_the_rules_let_write() {
        let access = ac(OWNER_ONLY);
        let stored = [doc("notes/alice/items/n1", serde_json::json!({"t": 1}))];
        let existing = path("notes/alice/items/n1");
        let missing = path("notes/alice/items/nope");
        let mallory = Principal::user("mallory");
        let attempts = [
            Write::create(existing.clone(), data(serde_json::json!({"t": 2}))),
            Write::update(
                missing.clone(),
                [(FieldPath::parse("t").unwrap(), Value::Integer(2))].into(),
            ),
            Write::set(existing.clone(), data(serde_json::json!({})))
                .with_precondition(Precondition::Exists(false)),
            Write::delete(missing.clone()).with_precondition(Precondition::Exists(true)),
            Write::set(existing.clone(), data(serde_json::json!({})))
                .with_precondition(Precondition::Version(7)),
        ];
        for w in &attempts {
            // Someone else: the same answer whether the document exists or not.
            let err = run(&access, &mallory, &stored, std::slice::from_ref(w)).unwrap_err();
            assert_eq!(err.code(), ErrorCode::PermissionDenied, "{w:?}: {err}");
            // The owner learns the real reason.
            let err = run(&access, &alice(), &stored, std::slice::from_ref(w)).unwrap_err();
            assert_ne!(err.code(), ErrorCode::PermissionDenied, "{w:?}: {err}");
        }
    }

    #[test]
    fn each_write_is_judged_against_the_state_earlier_writes_of_the_commit_leave() {
        let access = ac(OWNER_ONLY);
        let c = path("counters/c");
        let zero = Write::create(c.clone(), data(serde_json::json!({"n": 0})));
        let one = Write::set(c.clone(), data(serde_json::json!({"n": 1})));
        let two = Write::set(c.clone(), data(serde_json::json!({"n": 2})));
        // create n=0 then update to 1: the update sees the created document.
        run(&access, &alice(), &[], &[zero.clone(), one.clone()]).unwrap();
        // Skipping a step is refused even inside one batch.
        let err = run(&access, &alice(), &[], &[zero, two]).unwrap_err();
        assert_eq!(err.code(), ErrorCode::PermissionDenied);
        // One forbidden write refuses the whole commit.
        let err = run(
            &access,
            &alice(),
            &[],
            &[
                Write::set(path("notes/alice/items/a"), data(serde_json::json!({}))),
                Write::set(path("notes/bob/items/b"), data(serde_json::json!({}))),
            ],
        )
        .unwrap_err();
        assert_eq!(err.code(), ErrorCode::PermissionDenied);
    }

    #[test]
    fn the_admin_is_not_judged_and_system_paths_stay_admin_only() {
        let access = ac("match /{all=**} { allow read, write; }");
        let sys = Write::set(path("__users__/u1"), data(serde_json::json!({})));
        run(&access, &Principal::Admin, &[], std::slice::from_ref(&sys)).unwrap();
        let err = run(&access, &alice(), &[], &[sys]).unwrap_err();
        assert_eq!(err.code(), ErrorCode::PermissionDenied);
    }
}
