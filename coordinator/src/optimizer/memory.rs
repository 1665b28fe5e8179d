//! Memory share. Trigger: an attempt failed because it ran out of its memory share
//! even after spilling (DataFusion's `ResourcesExhausted`). Action: the task's next
//! attempts take twice as many task slots of their worker, and as many slots' shares
//! of the worker's `--memory-limit` (fewer tasks run beside it), up to the largest
//! worker's slots. Anchor: Spark retries such tasks as they are; Flink and Spark
//! users raise `executor.memory` by hand. Default: on; `adaptive_memory = false`
//! turns it off (the worker's `--memory-limit` and `--slots` set the shares).

use crate::state::decision::inputs;
use crate::state::{State, WorkerState};
use std::collections::BTreeMap;

/// A larger memory share for one task.
#[derive(Debug, Clone, PartialEq)]
pub struct LargerShare {
    /// slots per attempt from now on
    pub slots: u32,
    /// why, in words
    pub why: String,
    /// what the rule read
    pub inputs: BTreeMap<String, String>,
}

/// The share task `(job, stage, task)` gets after running out of memory, or `None`
/// when no worker has more slots to give it.
pub fn larger_share(s: &State, job_id: &str, stage: u32, task: u32) -> Option<LargerShare> {
    let job = s.jobs.get(job_id)?;
    if job.spec.job.params.adaptive_memory == Some(false) {
        return None;
    }
    let t = job.stages.get(stage as usize)?.tasks.get(task as usize)?;
    let now = t.memory_slots.max(1);
    let most = s
        .workers
        .values()
        .filter(|w| w.state == WorkerState::Alive)
        .map(|w| w.slots)
        .max()?;
    let slots = (now * 2).min(most);
    (slots > now).then(|| LargerShare {
        slots,
        why: format!(
            "stage {stage} task {task} ran out of its memory share ({now} slot(s)' share of its worker's --memory-limit) after spilling; its next attempt takes {slots} slots' share, with fewer tasks beside it"
        ),
        inputs: inputs([
            ("stage", stage.to_string()),
            ("task", task.to_string()),
            ("slots_before", now.to_string()),
            ("slots_after", slots.to_string()),
            ("largest_worker_slots", most.to_string()),
        ]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Command;

    #[test]
    fn an_out_of_memory_task_doubles_its_share_up_to_the_largest_worker() {
        let mut s = crate::state::test_state(&[("w1", 4), ("w2", 3)], 1);
        let x = larger_share(&s, "j", 0, 0).unwrap();
        assert_eq!(x.slots, 2);
        assert_eq!(x.inputs["largest_worker_slots"], "4");
        let grow = |s: &mut State, slots| {
            s.apply(&Command::TaskMemory {
                job_id: "j".into(),
                stage: 0,
                task: 0,
                slots,
            })
            .unwrap()
        };
        grow(&mut s, 2);
        assert_eq!(larger_share(&s, "j", 0, 0).unwrap().slots, 4);
        grow(&mut s, 4);
        assert_eq!(larger_share(&s, "j", 0, 0), None, "no worker has more");
        assert_eq!(larger_share(&s, "j", 9, 0), None);
        let job = s.jobs.get_mut("j").unwrap();
        job.stages[0].tasks[0].memory_slots = 1;
        job.spec.job.params.adaptive_memory = Some(false);
        assert_eq!(larger_share(&s, "j", 0, 0), None, "turned off");
    }
}
