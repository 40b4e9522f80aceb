//! Who may mount what: the access decision for a verified principal on a workspace path.
//!
//! The faces gather the facts (the principal a TokenReview verified, the workspace's home
//! namespace and owners, its Shares, the namespace a volume was provisioned for) and ask
//! [`decide`]; nothing here reads a clock or a store. An unknown answer is a refusal: a path
//! that does not parse, a workspace that does not exist and a principal without a namespace
//! are all granted nothing, and "nothing" is one answer, so a refusal never tells a caller
//! whether the workspace exists.

use crate::model::{Permission, Share, Timestamp, WorkspacePath};

/// A caller whose identity was verified (for Kubernetes: by a TokenReview of its pod's
/// service-account token; never by what a volume context claims).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Principal {
    /// The namespace of the service account.
    pub namespace: String,
    /// The service account's name.
    pub service_account: String,
    /// The user name the API server authenticated ("system:serviceaccount:<ns>:<sa>").
    pub username: String,
    /// Its groups ("system:serviceaccounts", "system:serviceaccounts:<ns>", ...).
    pub groups: Vec<String>,
}

impl Principal {
    /// The principal a service-account user name stands for, with its groups; `None` unless
    /// `username` is "system:serviceaccount:<namespace>:<name>".
    pub fn service_account(username: &str, groups: Vec<String>) -> Option<Principal> {
        let rest = username.strip_prefix("system:serviceaccount:")?;
        let (namespace, service_account) = rest.split_once(':')?;
        if namespace.is_empty() || service_account.is_empty() || service_account.contains(':') {
            return None;
        }
        Some(Principal {
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
            username: username.to_string(),
            groups,
        })
    }

    /// Whether a Share or owner subject ("ServiceAccount:ns/name", "User:u", "Group:g") names
    /// this principal. A service account's namespace group counts even when the API server
    /// did not list it.
    pub fn is(&self, subject: &str) -> bool {
        match subject.split_once(':') {
            Some(("ServiceAccount", sa)) => {
                sa.split_once('/') == Some((self.namespace.as_str(), self.service_account.as_str()))
            }
            Some(("User", user)) => user == self.username,
            Some(("Group", group)) => {
                self.groups.iter().any(|g| g == group)
                    || group.strip_prefix("system:serviceaccounts:") == Some(self.namespace.as_str())
            }
            _ => false,
        }
    }
}

/// Who a grant is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// Every service account of a namespace.
    Namespace(String),
    /// A Share or owner subject ("ServiceAccount:ns/name", "User:u", "Group:g").
    Subject(String),
}

/// One permission on a subtree of a workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub holder: Holder,
    /// The folder the grant covers, with everything below it.
    pub path: String,
    pub permission: Permission,
    /// The grant lapses at this instant.
    pub expires_at: Option<Timestamp>,
}

impl Grant {
    /// Whether the grant is live at `now` and held by `principal` (wherever it applies).
    fn holds(&self, principal: &Principal, now: Timestamp) -> bool {
        self.expires_at.is_none_or(|t| now < t)
            && match &self.holder {
                Holder::Namespace(ns) => *ns == principal.namespace,
                Holder::Subject(s) => principal.is(s),
            }
    }
}

/// What is known about the workspace a mount asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkspaceFacts {
    pub grants: Vec<Grant>,
}

impl WorkspaceFacts {
    /// The grants a workspace carries: its home namespace (a Workspace resource lives there)
    /// and its owners may administer all of it; each Share grants its subjects its permission
    /// on its path.
    pub fn of_workspace(home_namespace: Option<&str>, owners: &[String], shares: &[Share]) -> WorkspaceFacts {
        let whole = |holder, permission| Grant {
            holder,
            path: "/".into(),
            permission,
            expires_at: None,
        };
        let mut grants: Vec<Grant> = home_namespace
            .map(|ns| whole(Holder::Namespace(ns.to_string()), Permission::Admin))
            .into_iter()
            .chain(
                owners
                    .iter()
                    .map(|o| whole(Holder::Subject(o.clone()), Permission::Admin)),
            )
            .collect();
        for share in shares {
            grants.extend(share.subjects.iter().map(|s| Grant {
                holder: Holder::Subject(s.clone()),
                path: share.path.clone(),
                permission: share.permission,
                expires_at: share.expires_at,
            }));
        }
        WorkspaceFacts { grants }
    }

    /// Adds the grant of a volume provisioned for a claim of `namespace`: its pods may read and
    /// write the volume's folder.
    pub fn with_provisioned(mut self, namespace: &str, path: &str) -> WorkspaceFacts {
        self.grants.push(Grant {
            holder: Holder::Namespace(namespace.to_string()),
            path: path.to_string(),
            permission: Permission::Write,
            expires_at: None,
        });
        self
    }
}

/// The namespace a workspace name belongs to: the operator names a Workspace's store
/// workspace "<namespace>.<name>". Names without a dot (made by hand or by a StorageClass)
/// belong to no namespace.
pub fn home_namespace(workspace: &str) -> Option<&str> {
    workspace
        .split_once('.')
        .map(|(ns, _)| ns)
        .filter(|ns| !ns.is_empty())
}

/// Whether `principal` may be told that workspace `name` does not exist: only the namespace
/// it would belong to (everyone else gets the same refusal whether or not it exists).
pub fn may_learn_absence(principal: &Principal, name: &str) -> bool {
    home_namespace(name) == Some(principal.namespace.as_str())
}

/// Whether a grant on `grant_path` covers `path`: the same folder or one below it, compared
/// by whole names (`/a` covers `/a/b`, not `/ab`). Paths that are not absolute or do not parse
/// cover nothing.
pub fn covers(grant_path: &str, path: &str) -> bool {
    let absolute = |p: &str| {
        Some(p)
            .filter(|p| p.starts_with('/'))
            .and_then(|p| WorkspacePath::parse(p).ok())
    };
    match (absolute(grant_path), absolute(path)) {
        (Some(grant), Some(path)) => path.relative_to(&grant).is_some(),
        _ => false,
    }
}

/// The highest permission `principal` holds on `path` at `now`: `None` grants nothing.
/// `facts` is `None` when the workspace does not exist, which grants nothing either.
pub fn decide(
    principal: &Principal,
    facts: Option<&WorkspaceFacts>,
    path: &str,
    now: Timestamp,
) -> Option<Permission> {
    facts?
        .grants
        .iter()
        .filter(|g| g.holds(principal, now) && covers(&g.path, path))
        .map(|g| g.permission)
        .max()
}

/// How a mount may be used, given what was granted and what the request asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountAccess {
    /// Nothing: the publish is refused (a live mount refuses every operation but release).
    Denied,
    ReadOnly,
    ReadWrite,
}

impl MountAccess {
    /// A read grant mounts read-only even when the request asked for writes; write and admin
    /// mount read-write unless the request asked for read-only.
    pub fn of(granted: Option<Permission>, read_only_requested: bool) -> MountAccess {
        match granted {
            None => MountAccess::Denied,
            Some(Permission::Read) => MountAccess::ReadOnly,
            Some(_) if read_only_requested => MountAccess::ReadOnly,
            Some(_) => MountAccess::ReadWrite,
        }
    }
}

/// Whether `principal` holds any live grant on the workspace at all: the first question for
/// a snapshot mount, whose folder is known only once the snapshot is resolved (a principal
/// with no grant learns nothing about what the workspace holds).
pub fn holds_any(principal: &Principal, facts: Option<&WorkspaceFacts>, now: Timestamp) -> bool {
    facts.is_some_and(|f| f.grants.iter().any(|g| g.holds(principal, now)))
}

/// What a mount decided at publish and decides again while it runs (a Share deleted or
/// expired revokes what it granted): handed to the mount process with its spec.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AccessCheck {
    pub principal: Principal,
    /// The live-tree path the mount shows (for a snapshot: the snapshot's folder joined with
    /// the path below it).
    pub path: String,
    /// The namespace and folder a provisioned volume was made for.
    pub provisioned: Option<(String, String)>,
    /// The publish asked for read-only.
    pub read_only: bool,
}

impl AccessCheck {
    /// What the mount may do, given the workspace's facts now (`None`: it is gone).
    pub fn decide(&self, facts: Option<WorkspaceFacts>, now: Timestamp) -> MountAccess {
        let facts = match (&self.provisioned, facts) {
            (Some((ns, path)), Some(f)) => Some(f.with_provisioned(ns, path)),
            (_, f) => f,
        };
        MountAccess::of(
            decide(&self.principal, facts.as_ref(), &self.path, now),
            self.read_only,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::WorkspaceId;

    const NOW: Timestamp = Timestamp(1_000);

    fn sa(ns: &str, name: &str) -> Principal {
        Principal::service_account(
            &format!("system:serviceaccount:{ns}:{name}"),
            vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{ns}"),
                "system:authenticated".into(),
            ],
        )
        .unwrap()
    }

    fn share(path: &str, subjects: &[&str], permission: Permission, expires_at: Option<i64>) -> Share {
        Share {
            workspace: WorkspaceId(uuid::Uuid::nil()),
            name: "s".into(),
            path: path.into(),
            subjects: subjects.iter().map(ToString::to_string).collect(),
            permission,
            expires_at: expires_at.map(Timestamp),
        }
    }

    #[test]
    fn only_service_account_user_names_make_principals() {
        let p = sa("vfx", "render");
        assert_eq!(
            (p.namespace.as_str(), p.service_account.as_str()),
            ("vfx", "render")
        );
        for bad in [
            "alice",
            "system:serviceaccount:",
            "system:serviceaccount:vfx",
            "system:serviceaccount::render",
            "system:serviceaccount:vfx:",
            "system:serviceaccount:vfx:a:b",
            "system:node:n1",
        ] {
            assert_eq!(Principal::service_account(bad, vec![]), None, "{bad}");
        }
    }

    #[test]
    fn subjects_match_by_kind_and_whole_name() {
        let p = sa("vfx", "render");
        for yes in [
            "ServiceAccount:vfx/render",
            "User:system:serviceaccount:vfx:render",
            "Group:system:serviceaccounts:vfx",
            "Group:system:serviceaccounts",
        ] {
            assert!(p.is(yes), "{yes}");
        }
        for no in [
            "ServiceAccount:vfx/render2",
            "ServiceAccount:vfx2/render",
            "ServiceAccount:render",
            "User:render",
            "Group:system:serviceaccounts:vfx2",
            "Group:vfx",
            "render",
            "Role:vfx/render",
            "",
        ] {
            assert!(!p.is(no), "{no}");
        }
        // A namespace's group counts even if the API server did not list it.
        let bare = Principal::service_account("system:serviceaccount:vfx:render", vec![]).unwrap();
        assert!(bare.is("Group:system:serviceaccounts:vfx"));
    }

    #[test]
    fn covering_compares_whole_names() {
        let cases = [
            ("/", "/", true),
            ("/", "/a/b", true),
            ("/a", "/a", true),
            ("/a", "/a/b", true),
            ("/a", "/ab", false),
            ("/a/b", "/a", false),
            ("/a", "/", false),
            ("/a", "/a/../b", false),
            ("/a/..", "/b", false),
            ("relative", "/relative", false),
        ];
        for (grant, path, want) in cases {
            assert_eq!(covers(grant, path), want, "{grant} covers {path}");
        }
    }

    #[test]
    fn home_namespace_is_the_prefix_of_operator_names() {
        assert_eq!(home_namespace("studio-a.shot010"), Some("studio-a"));
        assert_eq!(home_namespace("default"), None);
        assert_eq!(home_namespace(".x"), None);
        let me = sa("vfx", "render");
        assert!(may_learn_absence(&me, "vfx.shot"));
        assert!(!may_learn_absence(&me, "vfx2.shot"));
        assert!(!may_learn_absence(&me, "default"));
    }

    /// Every combination of holder, path, expiry and permission against one principal.
    #[test]
    fn decisions_over_every_grant_shape() {
        let me = sa("vfx", "render");
        let holders = [
            (Holder::Namespace("vfx".into()), true),
            (Holder::Namespace("evil".into()), false),
            (Holder::Subject("ServiceAccount:vfx/render".into()), true),
            (Holder::Subject("ServiceAccount:evil/render".into()), false),
            (Holder::Subject("Group:system:serviceaccounts:vfx".into()), true),
            (Holder::Subject("User:alice".into()), false),
        ];
        let paths = [
            ("/", true),
            ("/shots", true),
            ("/shots/sh010", true),
            ("/shotsx", false),
            ("/other", false),
        ];
        let expiries = [
            (None, true),
            (Some(NOW.0 + 1), true),
            (Some(NOW.0), false),
            (Some(NOW.0 - 1), false),
        ];
        let permissions = [Permission::Read, Permission::Write, Permission::Admin];
        for (holder, holder_ok) in &holders {
            for (grant_path, _) in &paths {
                for (expiry, live) in &expiries {
                    for permission in permissions {
                        let facts = WorkspaceFacts {
                            grants: vec![Grant {
                                holder: holder.clone(),
                                path: grant_path.to_string(),
                                permission,
                                expires_at: expiry.map(Timestamp),
                            }],
                        };
                        for (path, _) in &paths {
                            let want =
                                (*holder_ok && *live && covers(grant_path, path)).then_some(permission);
                            assert_eq!(
                                decide(&me, Some(&facts), path, NOW),
                                want,
                                "{holder:?} {grant_path} {expiry:?} {permission:?} on {path}"
                            );
                        }
                    }
                }
            }
        }
        // No workspace, or no grants: nothing, the same answer.
        assert_eq!(decide(&me, None, "/", NOW), None);
        assert_eq!(decide(&me, Some(&WorkspaceFacts::default()), "/", NOW), None);
    }

    #[test]
    fn the_highest_live_grant_wins() {
        let me = sa("vfx", "render");
        let facts = WorkspaceFacts::of_workspace(
            Some("studio"),
            &["User:alice".into()],
            &[
                share("/a", &["ServiceAccount:vfx/render"], Permission::Read, None),
                share(
                    "/a/b",
                    &["Group:system:serviceaccounts:vfx"],
                    Permission::Write,
                    None,
                ),
                share(
                    "/a/b/c",
                    &["ServiceAccount:vfx/render"],
                    Permission::Admin,
                    Some(NOW.0 - 1),
                ),
            ],
        );
        assert_eq!(decide(&me, Some(&facts), "/a", NOW), Some(Permission::Read));
        assert_eq!(decide(&me, Some(&facts), "/a/b/c", NOW), Some(Permission::Write));
        assert_eq!(decide(&me, Some(&facts), "/", NOW), None);
        assert_eq!(
            decide(&sa("studio", "x"), Some(&facts), "/", NOW),
            Some(Permission::Admin)
        );
        let provisioned = WorkspaceFacts::default().with_provisioned("vfx", "/volumes/pvc-1");
        assert_eq!(
            decide(&me, Some(&provisioned), "/volumes/pvc-1/x", NOW),
            Some(Permission::Write)
        );
        assert_eq!(decide(&me, Some(&provisioned), "/volumes/pvc-2", NOW), None);
        assert!(holds_any(&me, Some(&facts), NOW));
        assert!(!holds_any(&sa("evil", "x"), Some(&facts), NOW));
        assert!(!holds_any(&me, None, NOW));
    }

    #[test]
    fn a_running_mount_loses_what_a_lapsed_share_granted() {
        let me = sa("vfx", "render");
        let check = AccessCheck {
            principal: me,
            path: "/shots/sh010".into(),
            provisioned: None,
            read_only: false,
        };
        let with = |shares: &[Share]| Some(WorkspaceFacts::of_workspace(Some("studio"), &[], shares));
        let write = share(
            "/shots",
            &["ServiceAccount:vfx/render"],
            Permission::Write,
            Some(NOW.0 + 10),
        );
        let read = share("/", &["Group:system:serviceaccounts:vfx"], Permission::Read, None);
        assert_eq!(
            check.decide(with(&[write.clone(), read.clone()]), NOW),
            MountAccess::ReadWrite
        );
        // The write share expires: the read share is left.
        assert_eq!(
            check.decide(with(&[write.clone(), read]), Timestamp(NOW.0 + 10)),
            MountAccess::ReadOnly
        );
        // Both deleted, or the workspace gone: nothing.
        assert_eq!(check.decide(with(&[]), NOW), MountAccess::Denied);
        assert_eq!(check.decide(None, NOW), MountAccess::Denied);
        let provisioned = AccessCheck {
            provisioned: Some(("vfx".into(), "/shots".into())),
            ..check
        };
        assert_eq!(provisioned.decide(with(&[]), NOW), MountAccess::ReadWrite);
        assert_eq!(provisioned.decide(None, NOW), MountAccess::Denied);
    }

    #[test]
    fn mount_access_follows_the_grant_and_the_request() {
        use MountAccess::*;
        let cases = [
            (None, false, Denied),
            (None, true, Denied),
            (Some(Permission::Read), false, ReadOnly),
            (Some(Permission::Read), true, ReadOnly),
            (Some(Permission::Write), false, ReadWrite),
            (Some(Permission::Write), true, ReadOnly),
            (Some(Permission::Admin), false, ReadWrite),
            (Some(Permission::Admin), true, ReadOnly),
        ];
        for (granted, ro, want) in cases {
            assert_eq!(MountAccess::of(granted, ro), want, "{granted:?} ro={ro}");
        }
    }
}
