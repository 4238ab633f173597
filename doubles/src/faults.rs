//! Injected faults: per target, a queue whose front fault applies to the next request(s) until its
//! count is used up.
//!
//! Owns only the queues; what a fault looks like on the wire is each endpoint's business
//! ([`crate::sts`], [`crate::iam`]).

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// Which double a fault or counter is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// Google STS (`POST /v1/token`).
    Sts,
    /// IAM Credentials (`…:generateAccessToken`).
    Iam,
}

/// A misbehaviour for the next `count` requests. JSON (with `"target"` alongside for
/// `POST /__faults`): `{"kind":"status","code":503,"retry_after":2,"count":1}`,
/// `{"kind":"delay","millis":500,"count":1}`, `{"kind":"reject","count":1}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Fault {
    /// Answer HTTP `code` with a Google-shaped error body, and `Retry-After: N` when set.
    Status {
        code: u16,
        #[serde(default)]
        retry_after: Option<u64>,
        count: u32,
    },
    /// Sleep, then handle the request normally.
    Delay { millis: u64, count: u32 },
    /// Refuse a request that would have succeeded: STS answers the attribute-condition rejection,
    /// IAM the permission denial.
    Reject { count: u32 },
}

impl Fault {
    fn count_mut(&mut self) -> &mut u32 {
        match self {
            Fault::Status { count, .. } | Fault::Delay { count, .. } | Fault::Reject { count } => {
                count
            }
        }
    }
}

/// The queues of both targets.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    sts: VecDeque<Fault>,
    iam: VecDeque<Fault>,
}

impl Faults {
    fn queue(&mut self, target: Target) -> &mut VecDeque<Fault> {
        match target {
            Target::Sts => &mut self.sts,
            Target::Iam => &mut self.iam,
        }
    }

    /// Appends `fault` behind the faults already queued for `target`.
    pub fn push(&mut self, target: Target, mut fault: Fault) {
        if *fault.count_mut() > 0 {
            self.queue(target).push_back(fault);
        }
    }

    pub fn clear(&mut self) {
        self.sts.clear();
        self.iam.clear();
    }

    /// The fault for the request arriving now, if any, using up one of its count.
    pub fn take(&mut self, target: Target) -> Option<Fault> {
        let queue = self.queue(target);
        let front = queue.front_mut()?;
        let count = front.count_mut();
        *count -= 1;
        let exhausted = *count == 0;
        let mut fault = if exhausted {
            queue.pop_front()?
        } else {
            front.clone()
        };
        *fault.count_mut() = 1;
        Some(fault)
    }

    /// What is still queued for `target`.
    pub fn pending(&self, target: Target) -> Vec<Fault> {
        match target {
            Target::Sts => self.sts.iter().cloned().collect(),
            Target::Iam => self.iam.iter().cloned().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_apply_in_order_and_count_down() {
        let mut faults = Faults::default();
        faults.push(
            Target::Sts,
            Fault::Status {
                code: 503,
                retry_after: None,
                count: 2,
            },
        );
        faults.push(Target::Sts, Fault::Reject { count: 1 });
        faults.push(Target::Sts, Fault::Reject { count: 0 });
        assert_eq!(faults.take(Target::Iam), None);
        assert!(matches!(
            faults.take(Target::Sts),
            Some(Fault::Status { code: 503, .. })
        ));
        assert_eq!(
            faults.pending(Target::Sts)[0],
            Fault::Status {
                code: 503,
                retry_after: None,
                count: 1
            }
        );
        assert!(matches!(
            faults.take(Target::Sts),
            Some(Fault::Status { code: 503, .. })
        ));
        assert_eq!(faults.take(Target::Sts), Some(Fault::Reject { count: 1 }));
        assert_eq!(faults.take(Target::Sts), None);
    }

    #[test]
    fn faults_read_from_json() {
        let fault: Fault =
            serde_json::from_str(r#"{"kind":"status","code":429,"retry_after":3,"count":1}"#)
                .unwrap();
        assert_eq!(
            fault,
            Fault::Status {
                code: 429,
                retry_after: Some(3),
                count: 1
            }
        );
    }
}
