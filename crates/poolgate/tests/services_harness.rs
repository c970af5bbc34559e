//! The test services harness itself works: a real redis-server and a real PostgreSQL answer,
//! survive a kill + restart on the same port, and a frozen server answers again once thawed.

mod services;

use std::time::Duration;

use redis::AsyncCommands;
use services::{PostgresServer, RedisServer};
use sqlx::Connection;

#[tokio::test]
async fn redis_answers_and_restarts_on_the_same_port() {
    let mut server = RedisServer::start().await;
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = conn.set("harness", "yes").await.unwrap();
    let value: String = conn.get("harness").await.unwrap();
    assert_eq!(value, "yes");

    let port = server.port();
    let old_pid = server.pid().unwrap();
    server.kill();
    assert!(
        client.get_multiplexed_async_connection().await.is_err(),
        "a killed server refuses connections"
    );
    server.restart().await;
    assert_eq!(server.port(), port, "restarted on the same port");
    assert_ne!(server.pid().unwrap(), old_pid, "a new process");
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let value: Option<String> = conn.get("harness").await.unwrap();
    assert_eq!(
        value, None,
        "no persistence: the restarted server starts empty"
    );
}

#[tokio::test]
async fn frozen_redis_does_not_answer_until_thawed() {
    let server = RedisServer::start().await;
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    server.freeze();
    let frozen = tokio::time::timeout(
        Duration::from_millis(300),
        redis::cmd("PING").query_async::<String>(&mut conn),
    )
    .await;
    assert!(frozen.is_err(), "a frozen server does not answer");
    server.thaw();
    let pong: String = tokio::time::timeout(
        Duration::from_secs(30),
        redis::cmd("PING").query_async(&mut conn),
    )
    .await
    .expect("a thawed server answers")
    .unwrap();
    assert_eq!(pong, "PONG");
}

#[tokio::test]
async fn postgres_answers_and_restarts_on_the_same_port_with_its_data() {
    let mut server = PostgresServer::start().await;
    let url = server.create_database("harness").await;
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query("CREATE TABLE marks (n int)")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("INSERT INTO marks VALUES (42)")
        .execute(&mut conn)
        .await
        .unwrap();
    let version: String = sqlx::query_scalar("SHOW server_version")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(!version.is_empty());

    let port = server.port();
    let old_pid = server.postmaster_pid().unwrap();
    server.kill();
    assert!(
        sqlx::query("SELECT 1").execute(&mut conn).await.is_err(),
        "the old connection died with the server"
    );
    assert!(sqlx::PgConnection::connect(&url).await.is_err());

    server.restart().await;
    assert_eq!(server.port(), port, "restarted on the same port");
    assert_ne!(
        server.postmaster_pid().unwrap(),
        old_pid,
        "a new postmaster"
    );
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    let n: i32 = sqlx::query_scalar("SELECT n FROM marks")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(n, 42, "the data survived the crash");
}

#[tokio::test]
async fn frozen_postgres_does_not_answer_until_thawed() {
    let server = PostgresServer::start().await;
    let mut conn = sqlx::PgConnection::connect(&server.url()).await.unwrap();
    server.freeze();
    let frozen = tokio::time::timeout(
        Duration::from_millis(300),
        sqlx::query("SELECT 1").execute(&mut conn),
    )
    .await;
    assert!(frozen.is_err(), "a frozen server does not answer");
    server.thaw();
    let one: i32 = tokio::time::timeout(
        Duration::from_secs(30),
        sqlx::query_scalar("SELECT 1").fetch_one(&mut conn),
    )
    .await
    .expect("a thawed server answers")
    .unwrap();
    assert_eq!(one, 1);
}
