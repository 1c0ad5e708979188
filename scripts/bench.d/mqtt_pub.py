"""Publisher half of scripts/bench's mosquitto store-and-forward run (runs in the bench venv).

    mqtt_pub.py --port P --count N --size S --out FILE [--topic T] [--inflight K]

Connects to the *local* broker (plain TCP on loopback), publishes N messages at QoS 1 whose
payload is the 8-byte big-endian sequence number (1..N) padded to S bytes, and waits for
every PUBACK. Writes {"published", "first_ns", "acked_ns"} to FILE. Then stays subscribed
to the broker's bridge notifications ($SYS/broker/connection/+/state) and appends
{"link_up_ns"} to FILE when a bridge reports "1" (link up), so the orchestrator can time
the drain from link-up. Exits on SIGTERM or after --linger seconds.
"""
import argparse, json, os, signal, struct, sys, threading, time

import paho.mqtt.client as mqtt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--size", type=int, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--topic", default="edge/bench/usage")
    ap.add_argument("--inflight", type=int, default=100)
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--linger", type=float, default=900)
    a = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    result = {}

    def save():
        tmp = a.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(result, f)
        os.replace(tmp, a.out)

    acked = [0]
    all_acked = threading.Event()
    # At most --inflight unacknowledged at a time, held here rather than in paho's own
    # queue: paho rescans its whole queue on every PUBACK (quadratic for 100k messages).
    window = threading.BoundedSemaphore(a.inflight)
    connected = threading.Event()

    def on_connect(c, u, flags, rc, props):
        if not rc.is_failure:
            connected.set()
            c.subscribe("$SYS/broker/connection/+/state", qos=0)

    def on_publish(c, u, mid, rc, props):
        window.release()
        acked[0] += 1
        if acked[0] == a.count:
            all_acked.set()

    def on_message(c, u, msg):
        # Retained "0" arrives at subscription; "1" when the bridge connects.
        if msg.payload.strip() == b"1" and not msg.retain and "link_up_ns" not in result:
            result["link_up_ns"] = time.time_ns()
            result["bridge_topic"] = msg.topic
            save()

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{os.getpid()}",
                    clean_session=True, protocol=mqtt.MQTTv311)
    c.max_inflight_messages_set(a.inflight)
    c.max_queued_messages_set(0)
    c.on_connect, c.on_publish, c.on_message = on_connect, on_publish, on_message
    c.connect("127.0.0.1", a.port, keepalive=30)
    c.loop_start()
    if not connected.wait(10):
        sys.exit("publisher: no CONNACK from the local broker")
    pad = b"\0" * max(0, a.size - 8)
    first = time.time_ns()
    end = time.monotonic() + a.timeout
    for seq in range(1, a.count + 1):
        if not window.acquire(timeout=max(0.0, end - time.monotonic())):
            break
        c.publish(a.topic, struct.pack(">Q", seq) + pad, qos=1)
    if not all_acked.wait(a.timeout):
        result.update(published=a.count, acked=acked[0], first_ns=first, error="timeout")
        save()
        sys.exit(f"publisher: only {acked[0]}/{a.count} acknowledged")
    result.update(published=a.count, acked=acked[0], first_ns=first, acked_ns=time.time_ns())
    save()
    time.sleep(a.linger)
    c.loop_stop()


if __name__ == "__main__":
    main()
