//! The coordinator group as the admin API shows it: each member's own view (role,
//! term, commit and applied index) gathered by asking every member, and membership
//! changes, which go through the leader.

use crate::core::Core;
use crate::raft::RaftStatus;
use autopipe_common::shuffle::channel_to;
use autopipe_proto::{self as pb, ShortName};
use std::time::Duration;

/// This member's own view.
pub fn member_status(st: &RaftStatus) -> pb::CoordinatorMember {
    pb::CoordinatorMember {
        id: st.id,
        address: st.members.get(&st.id).cloned().unwrap_or_default(),
        role: match st.role {
            crate::raft::Role::Leader => pb::MemberRole::Leader,
            crate::raft::Role::Follower => pb::MemberRole::Follower,
            crate::raft::Role::Candidate => pb::MemberRole::Candidate,
        } as i32,
        term: st.term,
        commit: st.commit,
        applied: st.applied,
        last_index: st.last_index,
        snapshot_index: st.snapshot_index,
        leader_id: st.leader.unwrap_or(0),
        error: String::new(),
        voters: st.voters.clone(),
    }
}

/// Every member's view: this one's directly, the others' over `MemberStatus` (an
/// unreachable member is listed with the error).
pub async fn cluster_status(core: &Core) -> pb::ClusterStatusResponse {
    let mut me = core.raft.status();
    // the applied member list, which a membership change's answer must already show
    // (the published status may lag it by one Ready)
    me.members = core.members();
    let asks = me.members.iter().map(|(id, addr)| {
        let me = &me;
        async move {
            if *id == me.id {
                return member_status(me);
            }
            let ask = async {
                let ch = channel_to(addr).map_err(|e| e.to_string())?;
                let mut c = pb::admin_service_client::AdminServiceClient::new(ch);
                let mut req = tonic::Request::new(pb::MemberStatusRequest {});
                req.set_timeout(Duration::from_secs(1));
                c.member_status(req)
                    .await
                    .map(|r| r.into_inner())
                    .map_err(|s| s.message().to_string())
            };
            match tokio::time::timeout(Duration::from_millis(1500), ask).await {
                Ok(Ok(mut m)) => {
                    m.address = addr.clone();
                    m
                }
                Ok(Err(e)) => unreachable_member(*id, addr, e),
                Err(_) => unreachable_member(*id, addr, "no answer within 1.5 s".into()),
            }
        }
    });
    let members = futures::future::join_all(asks).await;
    let leader_id = me.leader.unwrap_or(0);
    pb::ClusterStatusResponse {
        leader_id,
        leader_address: me.members.get(&leader_id).cloned().unwrap_or_default(),
        members,
    }
}

fn unreachable_member(id: u64, address: &str, error: String) -> pb::CoordinatorMember {
    pb::CoordinatorMember {
        id,
        address: address.to_string(),
        error,
        ..Default::default()
    }
}

/// JSON form for the HTTP admin API.
pub fn cluster_json(c: &pb::ClusterStatusResponse) -> serde_json::Value {
    serde_json::json!({
        "leader_id": c.leader_id,
        "leader_address": c.leader_address,
        "members": c.members.iter().map(|m| serde_json::json!({
            "id": m.id,
            "address": m.address,
            // empty for a member that could not be asked
            "role": if m.role == 0 { String::new() } else { pb::MemberRole::name_of(m.role) },
            "term": m.term,
            "commit": m.commit,
            "applied": m.applied,
            "last_index": m.last_index,
            "snapshot_index": m.snapshot_index,
            "leader_id": m.leader_id,
            "voters": m.voters,
            "error": m.error,
        })).collect::<Vec<_>>(),
    })
}
