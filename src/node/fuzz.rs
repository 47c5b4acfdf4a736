//! Entry points for the fuzz targets in `fuzz/` (not an API): drive the
//! router's state machine with arbitrary frames, as from a connected user and
//! from a linked server.

use super::router::{Input, LinkHelloIn, MailboxLimits, Router, RouterConfig, UserHelloIn};
use super::state::Snapshot;
use crate::crypto::PublicKey;
use crate::wire::messages::{Message, Role};
use crate::wire::{Envelope, ids};

/// A fixture public key (alice's from the shared vectors): fuzzing needs a
/// valid key, not a secret one.
const KEY: &str = "MIICIjANBgkqhkiG9w0BAQEFAAOCAg8AMIICCgKCAgEA0GPQFGLcsntXp4llpIkN1hDNd8jAQ2o2ailqnSe0mLxR-zTcZrn68tRLnqjK89YZtVMh4ydATH9sn_IHxpJNyKGQsC9uFbSDn4lfjQYPN3AcJrfYvG2uZzL-VrIRHt02cG_EwZTxtSKmYIkOYaa2Rq-w_RgcY1H_7qux9bAp3exQWPEqUFIeX8VpjDC685UtRN-WdO6LsGGFot_EjOaJMQX_eVHHyYHIzHWyN4wuCPUEBYAWUXA6yvG84exenfrWnqKwTiUz3AtLpY8BZ4Dayui2eR_ipKrqiQanr9CVSDr0TsthFK7fvxhypoOydgSgpQRaJQslUQDaYn-4chCBE9PyEIB3fGVD4t77iXixMxACT5OIZWXGeaUggxKtNfVzb-DwUuigmTxI_uSbFnl9hRPQ_4XvhR118AbjZAZ_GxqxMZtLwP1cdA0lBNLJavyziSk6f_cDrwwjAllXKHLChaxdpiWrO57uwjGnRV2QG5Qp8L0xIbUof3ee4kcfYx2zTe5U_uQe5rbISMu6KuGgDREkwN5zHuyPDyUIYjlJYx7i5RevIT5rWIH_yQM5vfkyawGlHc9TPe04MC8RlrMA3I3-3BN8z-T_oH9U9Ugdqg3D8teWkRS_hL1ixlx5pwyKTap0XcWswyAgoT7TMN2GsVMkX6mRgBcOyKbBaFWD2oECAwEAAQ";

/// Feeds `data`, if it is a frame at all, to a master and to a local as
/// coming from a connected user and from a linked server.
pub fn dispatch(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(env) = Envelope::parse(text) else {
        return;
    };
    let Ok(msg) = Message::from_envelope(&env) else {
        return;
    };
    let Ok(key) = PublicKey::from_b64(KEY) else {
        return;
    };
    for master in [true, false] {
        let cfg = RouterConfig {
            me: if master {
                ids::new_master_id()
            } else {
                ids::new_local_server_id()
            },
            master,
            allow_legacy: true,
            pubkey: KEY.to_owned(),
            host: "127.0.0.1".into(),
            port: 1,
            url: String::new(),
            limits: MailboxLimits::default(),
            max_group_members: 16,
            max_file_size: 1 << 20,
            admission: Default::default(),
            presence_cache: 0,
        };
        let mut router = Router::new(cfg, Snapshot::default());
        let peer = ids::new_local_server_id();
        let link = LinkHelloIn {
            conn: 2,
            server_id: peer.clone(),
            key: key.clone(),
            role: if master { Role::Local } else { Role::Master },
            host: "h".into(),
            port: 1,
            ts: 1,
            to: ids::TO_SERVER.into(),
            socp: true,
            answers_registrations: true,
            lookup: false,
            dialed: !master,
            dialed_master: !master,
            session: None,
            signed: None,
        };
        router.step(0, Input::LinkHello(link));
        let hello = UserHelloIn {
            conn: 1,
            user_id: env.from.clone(),
            key: key.clone(),
            proof: None,
            session: None,
            addr: None,
        };
        router.step(0, Input::UserHello(hello));
        router.step(
            1,
            Input::UserFrame {
                conn: 1,
                env: env.clone(),
                msg: msg.clone(),
            },
        );
        let mut from_peer = env.clone();
        from_peer.from = peer;
        router.step(
            2,
            Input::LinkFrame {
                conn: 2,
                env: from_peer,
                msg: msg.clone(),
            },
        );
        router.step(3, Input::Tick);
        router.step(4, Input::UserClosed(1));
        router.step(5, Input::LinkClosed(2));
    }
}
