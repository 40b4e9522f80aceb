mod common;
use common::*;
use drive::model::*;

#[tokio::test]
async fn create_and_lookup_round_trip() {
    let store = store().await;
    let ws = workspace(&store, "smoke", WorkspaceKind::User).await;
    let dir = store.create(&actor(), ws.id, ws.root, &name("shots"), &NewNode::new(NodeKind::Directory, 0o755)).await.unwrap();
    let got = store.lookup(View::Live, ws.root, &name("shots")).await.unwrap();
    assert_eq!(got.ino, dir.ino);
    assert_eq!(got.kind, NodeKind::Directory);
}
