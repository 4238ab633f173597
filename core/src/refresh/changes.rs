//! Which watched resources need a reconcile: those seen for the first time and those whose
//! spec changed (a new `metadata.generation`). Status-only updates, most of them the
//! controller's own, are passed over: the next refresh is already scheduled.
//!
//! The memory of what was passed on is one small entry per resource (its uid as a number,
//! the generation and a listing mark), not an object reference of four strings, since it is
//! kept for every resource the controller watches. Deleted resources are forgotten, and so are
//! those that a relist no longer shows (deleted while the watch was down).

use std::collections::HashMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::api::FederatedCredential;

/// What was passed on of each watched resource.
#[derive(Debug, Default)]
pub struct SpecChanges {
    seen: HashMap<Key, Seen>,
    /// Bumped at each relist; entries not marked with the current one when it ends are of
    /// resources that are gone.
    listing: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    /// A uid as the API server writes it, a UUID, as its 128 bits.
    Uuid(u128),
    /// Any other uid, or none: by namespace, name and uid, hashed. Only resources not made by
    /// an API server (tests) have one.
    Hashed(u64),
}

#[derive(Debug, Clone, Copy)]
struct Seen {
    generation: Option<i64>,
    listing: u32,
}

impl Key {
    fn of(meta: &ObjectMeta) -> Key {
        if let Some(uuid) = meta.uid.as_deref().and_then(parse_uuid) {
            return Key::Uuid(uuid);
        }
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (&meta.namespace, &meta.name, &meta.uid).hash(&mut hasher);
        Key::Hashed(hasher.finish())
    }
}

/// The 128 bits of a UUID written as 32 hex digits in groups of 8-4-4-4-12.
fn parse_uuid(uid: &str) -> Option<u128> {
    let bytes = uid.as_bytes();
    if bytes.len() != 36 || [8, 13, 18, 23].iter().any(|&i| bytes[i] != b'-') {
        return None;
    }
    let mut value: u128 = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            continue;
        }
        let digit = (b as char).to_digit(16)?;
        value = (value << 4) | u128::from(digit);
    }
    Some(value)
}

impl SpecChanges {
    /// A resource was added or updated (or listed): whether to reconcile it, that is, whether
    /// it is new here or its generation differs from the one last passed on.
    pub fn applied(&mut self, meta: &ObjectMeta) -> bool {
        let seen = Seen {
            generation: meta.generation,
            listing: self.listing,
        };
        match self.seen.insert(Key::of(meta), seen) {
            None => true,
            // A resource without a generation is passed on each time, as there is nothing to
            // tell its changes by.
            Some(before) => before.generation != seen.generation || seen.generation.is_none(),
        }
    }

    /// A resource was deleted.
    pub fn deleted(&mut self, meta: &ObjectMeta) {
        self.seen.remove(&Key::of(meta));
    }

    /// A relist begins: what it does not show again is gone.
    pub fn relist_started(&mut self) {
        self.listing = self.listing.wrapping_add(1);
    }

    /// The relist is complete: forget the resources it did not show.
    pub fn relist_done(&mut self) {
        let listing = self.listing;
        self.seen.retain(|_, seen| seen.listing == listing);
    }

    /// How many resources are remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.seen.len()
    }
}

/// Drops what the controller never reads from a cached FederatedCredential's metadata: the
/// field-manager history, the labels, and the annotations other than fedcred's own (such as
/// `fedcred.io/rollout`), which tools like kubectl, Helm and Argo CD fill, kubectl's with a
/// copy of the whole object. The cache holds one resource per FederatedCredential.
pub fn trim_cached(fc: &mut FederatedCredential) {
    let meta = &mut fc.metadata;
    meta.managed_fields = None;
    meta.labels = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.retain(|key, _| key.starts_with(FEDCRED_PREFIX));
        if annotations.is_empty() {
            meta.annotations = None;
        }
    }
}

/// The prefix of fedcred's own labels and annotations.
const FEDCRED_PREFIX: &str = "fedcred.io/";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::ROLLOUT_ANNOTATION;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;

    fn meta(name: &str, uid: &str, generation: i64) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some("shop".into()),
            uid: Some(uid.into()),
            generation: Some(generation),
            ..ObjectMeta::default()
        }
    }

    const UID_A: &str = "6f1c2a9e-3b0d-4d6e-9a51-0c7e2f3b4a10";
    const UID_B: &str = "6f1c2a9e-3b0d-4d6e-9a51-0c7e2f3b4a11";

    #[test]
    fn the_first_sight_and_each_new_generation_pass_and_status_updates_do_not() {
        let mut changes = SpecChanges::default();
        assert!(changes.applied(&meta("orders", UID_A, 1)), "first sight");
        assert!(
            !changes.applied(&meta("orders", UID_A, 1)),
            "a status update"
        );
        assert!(!changes.applied(&meta("orders", UID_A, 1)), "another one");
        assert!(
            changes.applied(&meta("orders", UID_A, 2)),
            "the spec changed"
        );
        assert!(!changes.applied(&meta("orders", UID_A, 2)));
        assert_eq!(changes.len(), 1);
    }

    #[test]
    fn a_resource_recreated_under_its_name_is_new() {
        let mut changes = SpecChanges::default();
        assert!(changes.applied(&meta("orders", UID_A, 1)));
        assert!(changes.applied(&meta("orders", UID_B, 1)));
    }

    #[test]
    fn resources_are_told_apart_by_uid_even_when_the_uids_differ_in_one_digit() {
        assert_ne!(parse_uuid(UID_A), parse_uuid(UID_B));
        assert_eq!(
            parse_uuid("00000000-0000-0000-0000-0000000000ff"),
            Some(0xff)
        );
        assert_eq!(parse_uuid("6f1c2a9e3b0d4d6e9a510c7e2f3b4a10"), None);
        assert_eq!(parse_uuid("6f1c2a9e-3b0d-4d6e-9a51-0c7e2f3b4a1g"), None);
        assert_eq!(parse_uuid("6f1c2a9e-3b0d-4d6e-9a51+0c7e2f3b4a10"), None);
        // Not a UUID: the resources are still told apart, by name.
        let mut changes = SpecChanges::default();
        assert!(changes.applied(&meta("orders", "one", 1)));
        assert!(changes.applied(&meta("billing", "one", 1)));
        assert!(!changes.applied(&meta("orders", "one", 1)));
    }

    #[test]
    fn a_deleted_resource_is_forgotten() {
        let mut changes = SpecChanges::default();
        changes.applied(&meta("orders", UID_A, 1));
        changes.deleted(&meta("orders", UID_A, 1));
        assert_eq!(changes.len(), 0);
    }

    #[test]
    fn a_relist_passes_only_what_changed_and_forgets_what_it_no_longer_shows() {
        let mut changes = SpecChanges::default();
        changes.applied(&meta("orders", UID_A, 1));
        changes.applied(&meta("billing", UID_B, 3));
        changes.relist_started();
        assert!(!changes.applied(&meta("orders", UID_A, 1)), "unchanged");
        changes.relist_done();
        assert_eq!(
            changes.len(),
            1,
            "billing was deleted while the watch was down"
        );
        // Had it come back, it would be new.
        assert!(changes.applied(&meta("billing", UID_B, 3)));
    }

    #[test]
    fn a_resource_without_a_generation_always_passes() {
        let mut changes = SpecChanges::default();
        let mut m = meta("orders", UID_A, 1);
        m.generation = None;
        assert!(changes.applied(&m));
        assert!(changes.applied(&m));
    }

    #[test]
    fn the_cache_keeps_fedcreds_annotations_and_drops_the_rest_of_the_metadata_it_never_reads() {
        let mut fc = crate::testing::credential("orders").build();
        fc.metadata.managed_fields = Some(vec![ManagedFieldsEntry::default()]);
        fc.metadata.labels = Some([("app".to_owned(), "orders".to_owned())].into());
        fc.metadata.annotations = Some(
            [
                (ROLLOUT_ANNOTATION.to_owned(), "false".to_owned()),
                (
                    "kubectl.kubernetes.io/last-applied-configuration".to_owned(),
                    "{}".to_owned(),
                ),
                ("argocd.argoproj.io/tracking-id".to_owned(), "x".to_owned()),
            ]
            .into(),
        );
        let spec = fc.spec.clone();
        trim_cached(&mut fc);
        assert_eq!(fc.metadata.managed_fields, None);
        assert_eq!(fc.metadata.labels, None);
        assert_eq!(
            fc.metadata.annotations,
            Some([(ROLLOUT_ANNOTATION.to_owned(), "false".to_owned())].into())
        );
        assert_eq!(fc.spec, spec);
        assert_eq!(fc.metadata.name.as_deref(), Some("orders"));

        fc.metadata.annotations = Some([("note".to_owned(), "x".to_owned())].into());
        trim_cached(&mut fc);
        assert_eq!(fc.metadata.annotations, None);
    }
}
