//! Multiplexing: calls both ways on one connection, answers out of order, close and idle ends.

use std::time::Duration;

use super::*;
use crate::cookie::Cookie;

const COOKIE: &str = "0123456789abcdef0123456789abcdef";

fn n(s: &str) -> NodeName {
    s.parse().unwrap()
}

/// Answers `Ping` with a `Pong` naming the caller, after `Status` waits 200 ms first.
fn handler(me: &str) -> Handler {
    let me = n(me);
    Arc::new(move |req, peer| {
        let me = me.clone();
        Box::pin(async move {
            if matches!(req, Request::Status) {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let resp = match (req, peer) {
                (Request::Ping, Some(p)) => Response::Error {
                    message: format!("{me} answers {p}"),
                },
                _ => Response::Pong { node: me },
            };
            Handled::from(resp)
        })
    })
}

/// A connected pair: `a` dialled `b`.
async fn pair(
    a_handler: Option<Handler>,
) -> (
    (Arc<Conn>, JoinHandle<Option<ChannelError>>),
    (Arc<Conn>, JoinHandle<Option<ChannelError>>),
) {
    let cookie = Cookie::parse(COOKIE, "test").unwrap();
    let (x, y) = tokio::io::duplex(1 << 16);
    let (a, b) = (n("a@127.0.0.1:1"), n("b@127.0.0.1:2"));
    let c2 = cookie.clone();
    let b2 = b.clone();
    let server = tokio::spawn(async move {
        Channel::accept(Box::new(y) as PeerStream, &c2, "test", &b2)
            .await
            .unwrap()
    });
    let (client, answered) = Channel::connect(Box::new(x) as PeerStream, &cookie, "test", Some(&a))
        .await
        .unwrap();
    assert_eq!(answered, b);
    let (server, client_name) = server.await.unwrap();
    assert_eq!(client_name, Some(a.clone()));
    (
        Conn::start(client, Some(b), a_handler),
        Conn::start(server, client_name, Some(handler("b@127.0.0.1:2"))),
    )
}

#[tokio::test]
async fn calls_go_both_ways_on_one_connection_and_answers_may_overtake() {
    let ((a, _), (b, _)) = pair(Some(handler("a@127.0.0.1:1"))).await;
    // a → b: the slow call is answered after the fast one that was sent later.
    let slow = {
        let a = a.clone();
        tokio::spawn(async move { a.call(&Request::Status).await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    let fast = a.call(&Request::Ping).await.unwrap();
    assert!(!slow.is_finished(), "the fast answer overtook the slow one");
    assert_eq!(
        fast,
        Response::Error {
            message: "b@127.0.0.1:2 answers a@127.0.0.1:1".into()
        }
    );
    assert_eq!(
        slow.await.unwrap().unwrap(),
        Response::Pong {
            node: n("b@127.0.0.1:2")
        }
    );
    // b → a on the same connection, knowing a by its authenticated name.
    assert_eq!(
        b.call(&Request::Ping).await.unwrap(),
        Response::Error {
            message: "a@127.0.0.1:1 answers b@127.0.0.1:2".into()
        }
    );
}

#[tokio::test]
async fn a_side_without_handler_answers_with_an_error() {
    let ((_a, _), (b, _)) = pair(None).await;
    match b.call(&Request::Ping).await.unwrap() {
        Response::Error { message } => assert!(message.contains("serves no requests"), "{message}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn closing_fails_waiting_calls_and_ends_the_other_side() {
    let ((a, a_task), (b, b_task)) = pair(None).await;
    let waiting = {
        let a = a.clone();
        tokio::spawn(async move { a.call(&Request::Status).await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    a.close();
    assert!(matches!(waiting.await.unwrap(), Err(ChannelError::Closed)));
    assert!(matches!(a.call(&Request::Ping).await, Err(ChannelError::Closed)));
    assert!(a_task.await.unwrap().is_none());
    let ended = tokio::time::timeout(Duration::from_secs(5), b_task)
        .await
        .expect("the other side ends");
    assert!(ended.unwrap().is_none());
    assert!(b.is_closed());
}

#[tokio::test(start_paused = true)]
async fn an_idle_connection_is_closed() {
    let ((a, a_task), (b, _)) = pair(None).await;
    assert_eq!(a.call(&Request::Ping).await.ok().map(|_| ()), Some(()));
    tokio::time::sleep(IDLE_TIMEOUT + Duration::from_secs(1)).await;
    assert!(a_task.await.unwrap().is_none());
    assert!(a.is_closed());
    assert!(matches!(b.call(&Request::Ping).await, Err(ChannelError::Closed)));
    assert!(b.is_closed());
}

#[tokio::test]
async fn requests_past_the_in_flight_limit_are_refused_not_queued() {
    let ((a, _), _b) = pair(None).await;
    // b's handler holds each Status for 200 ms: the 65th concurrent one is refused at once.
    let calls: Vec<_> = (0..MAX_IN_FLIGHT + 1)
        .map(|_| {
            let a = a.clone();
            tokio::spawn(async move { a.call(&Request::Status).await })
        })
        .collect();
    let mut refused = 0;
    for c in calls {
        match c.await.unwrap().unwrap() {
            Response::Error { message } if message.contains("in flight") => refused += 1,
            Response::Pong { .. } => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(refused, 1);
}
