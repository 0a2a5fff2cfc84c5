// Peer for the load benchmark (issue 7): the original tutorial app's chat on Node
// Socket.IO v4. Login with a name, land in a room (`general` unless one is given),
// `send_message` → `message` to everyone in the room, the sender included.
//
//   PORT=5001 node server.js        (binds 127.0.0.1 only)
'use strict';
const http = require('http');
const { Server } = require('socket.io');

const port = Number(process.env.PORT || 5001);
const httpServer = http.createServer();
const io = new Server(httpServer, {
  transports: ['websocket', 'polling'],
  cors: { origin: '*' },
  maxHttpBufferSize: 64 * 1024,
});

// room -> Set of names, for the member list in `joined`.
const rooms = new Map();

io.on('connection', (socket) => {
  socket.on('login', (data) => {
    if (!data || typeof data.name !== 'string') return;
    const room = typeof data.room === 'string' ? data.room : 'general';
    socket.data.name = data.name;
    socket.data.room = room;
    if (!rooms.has(room)) rooms.set(room, new Set());
    const members = rooms.get(room);
    members.add(data.name);
    socket.join(room);
    socket.emit('joined', { room, members: Array.from(members) });
    socket.to(room).emit('user_joined', { room, user: data.name, ts: Date.now() });
  });
  socket.on('send_message', (data) => {
    const room = socket.data.room;
    if (!room || !data || typeof data.body !== 'string') return;
    io.to(room).emit('message', { room, user: socket.data.name, body: data.body, ts: Date.now() });
  });
  socket.on('disconnect', () => {
    const room = socket.data.room;
    if (!room) return;
    const members = rooms.get(room);
    if (members) members.delete(socket.data.name);
    socket.to(room).emit('user_left', { room, user: socket.data.name, ts: Date.now() });
  });
});

httpServer.listen(port, '127.0.0.1', () => {
  console.log(`listening on http://127.0.0.1:${httpServer.address().port}`);
});
const stop = () => { io.close(); process.exit(0); };
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
