"""Subscriber half of scripts/bench's mosquitto store-and-forward run (runs in the bench venv).

    mqtt_sub.py --port P --count N --out FILE [--topic T]

A persistent-session (clean_session=False, QoS 1) subscriber on the *central* broker.
It reconnects every 0.1-0.2 s while the broker is down, so a broker restart loses
nothing. For every message it reads the 8-byte sequence number at the head of the payload
and keeps a bitmap: distinct sequence numbers, duplicates, out-of-range, and the times of
the first and the last message. Writes {"ready"} once subscribed, then its counts to FILE
every 0.25 s and at the end; exits once it has all N distinct numbers, or on SIGTERM.
"""
import argparse, json, os, signal, struct, threading, time

import paho.mqtt.client as mqtt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--topic", default="edge/bench/#")
    a = ap.parse_args()
    seen = bytearray(a.count + 1)
    st = {"ready": False, "received": 0, "distinct": 0, "duplicates": 0, "bad": 0,
          "first_ns": None, "last_ns": None, "complete": False}
    lock = threading.Lock()
    done = threading.Event()

    def save():
        with lock:
            snap = dict(st)
        tmp = a.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(snap, f)
        os.replace(tmp, a.out)

    def on_connect(c, u, flags, rc, props):
        if not rc.is_failure:
            c.subscribe(a.topic, qos=1)

    def on_subscribe(c, u, mid, rcs, props):
        with lock:
            st["ready"] = True

    def on_message(c, u, msg):
        now = time.time_ns()
        with lock:
            st["received"] += 1
            st["first_ns"] = st["first_ns"] or now
            st["last_ns"] = now
            if len(msg.payload) < 8:
                st["bad"] += 1
                return
            seq = struct.unpack(">Q", msg.payload[:8])[0]
            if not 1 <= seq <= a.count:
                st["bad"] += 1
            elif seen[seq]:
                st["duplicates"] += 1
            else:
                seen[seq] = 1
                st["distinct"] += 1
                if st["distinct"] == a.count:
                    st["complete"] = True
                    done.set()

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-sub",
                    clean_session=False, protocol=mqtt.MQTTv311)
    c.reconnect_delay_set(0.1, 0.2)
    c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
    signal.signal(signal.SIGTERM, lambda *_: (save(), os._exit(0)))
    c.connect_async("127.0.0.1", a.port, keepalive=30)
    c.loop_start()
    while not done.wait(0.25):
        save()
    save()
    c.disconnect()
    c.loop_stop()


if __name__ == "__main__":
    main()
