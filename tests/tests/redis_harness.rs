//! The Redis test harness itself: a test's own `redis-server` answers, stops (its port then
//! refuses), and starts again on the same port.

use std::net::TcpStream;
use std::time::Duration;

use troupe_tests::redis::{skip_without_redis, RedisProcess};

#[test]
fn own_redis_stops_and_starts_again_on_its_port() {
    if skip_without_redis("own_redis_stops_and_starts_again_on_its_port") {
        return;
    }
    let mut redis = RedisProcess::start().unwrap();
    let addr = redis.addr();
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{}", addr.port()));
    redis.ping().unwrap();

    redis.stop().unwrap();
    assert!(redis.pid().is_none());
    assert!(
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err(),
        "port {} still accepts connections after stop",
        addr.port()
    );
    assert!(redis.ping().is_err());

    redis.start_again().unwrap();
    assert_eq!(redis.addr(), addr, "restarted on another port");
    redis.ping().unwrap();
}
