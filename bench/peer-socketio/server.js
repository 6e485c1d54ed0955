'use strict';
// The Socket.IO peer our chat server is measured against: Socket.IO 4.8 with the
// Redis adapter, so several instances share one room the way ours do over Kafka.
//
// Events: the client connects with auth {user}, emits "join" ROOM (answered with
// "joined" {room}) and "send" {room, text, cid}; every instance then emits
// "message" {room, id, user, text, ts, cid} to the room with io.to(room).emit,
// which the Redis adapter fans out across instances. GET /readyz answers 200 once
// both Redis connections are up.
//
//   PORT=3001 REDIS_URL=redis://127.0.0.1:6390 node server.js

const http = require('node:http');
const os = require('node:os');
const { Server } = require('socket.io');
const { createAdapter } = require('@socket.io/redis-adapter');
const { createClient } = require('redis');

const PORT = Number(process.env.PORT || 3000);
const HOST = process.env.HOST || '127.0.0.1';
const REDIS_URL = process.env.REDIS_URL || 'redis://127.0.0.1:6379';
const INSTANCE_ID = process.env.INSTANCE_ID || `${os.hostname()}-${process.pid}`;
const ROOM_RE = /^[a-z0-9][a-z0-9_-]{0,31}$/;
const MAX_TEXT_CHARS = 2000;

async function main() {
  const pub = createClient({ url: REDIS_URL });
  const sub = pub.duplicate();
  for (const client of [pub, sub]) {
    client.on('error', (err) => console.error(`redis: ${err.message}`));
  }
  await Promise.all([pub.connect(), sub.connect()]);

  const httpServer = http.createServer((req, res) => {
    const path = (req.url || '').split('?')[0];
    if (path === '/readyz' || path === '/healthz') {
      const ok = path === '/healthz' || (pub.isReady && sub.isReady);
      res.writeHead(ok ? 200 : 503, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ redis: ok ? 'ok' : 'down', instance: INSTANCE_ID }));
      return;
    }
    res.writeHead(404, { 'content-type': 'application/json' });
    res.end('{"error":{"code":"not_found","message":"no such page"}}');
  });

  const io = new Server(httpServer, { adapter: createAdapter(pub, sub), serveClient: false });
  let seq = 0;

  io.on('connection', (socket) => {
    const auth = socket.handshake.auth || {};
    const user = String(auth.user || socket.handshake.query.user || '');
    if (!user) {
      socket.disconnect(true);
      return;
    }
    socket.on('join', (room) => {
      if (typeof room !== 'string' || !ROOM_RE.test(room)) {
        socket.emit('failed', { code: 'invalid_room' });
        return;
      }
      socket.join(room);
      socket.emit('joined', { room });
    });
    socket.on('send', (data) => {
      const room = data && data.room;
      const cid = data && data.cid;
      const text = data && typeof data.text === 'string' ? data.text.trim() : '';
      if (typeof room !== 'string' || !socket.rooms.has(room)) {
        socket.emit('failed', { code: 'not_joined', cid });
        return;
      }
      if (!text || text.length > MAX_TEXT_CHARS || typeof cid !== 'string') {
        socket.emit('failed', { code: 'bad_frame', cid });
        return;
      }
      seq += 1;
      io.to(room).emit('message', {
        room,
        id: `${INSTANCE_ID}:${seq}`,
        user,
        text,
        ts: Date.now(),
        cid,
      });
    });
  });

  httpServer.listen(PORT, HOST, () => {
    console.log(`socket.io peer ${INSTANCE_ID} on http://${HOST}:${PORT} redis=${REDIS_URL}`);
  });

  let stopping = false;
  const stop = () => {
    if (stopping) return;
    stopping = true;
    io.close(); // disconnects every socket and closes the HTTP server
    Promise.allSettled([pub.quit(), sub.quit()]).then(() => process.exit(0));
    setTimeout(() => process.exit(0), 5000).unref();
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main().catch((err) => {
  console.error(`socket.io peer: ${err.stack || err}`);
  process.exit(1);
});
