// The demo screenplay editor, built on the React bindings (`../react`): one scene at a time,
// with presence avatars, remote cursors, "… is typing", a status bar fed by the session's
// state and durable acks, and the notices the cluster sends (a restore, autosave, read-only).

import { createElement as h, useEffect, useRef, useState } from 'react'
import { createRoot } from 'react-dom/client'

import {
  useYjsCollaboration, CollaborativeScreenplayEditor, PresenceAvatars, CollaborationStatusBar,
  TypingIndicator, BLOCK_TYPES, BLOCK_LABELS, setBlock
} from '../react/index.js'

const COLORS = ['#e6194b', '#3cb44b', '#4363d8', '#f58231', '#911eb4', '#008080', '#9a6324', '#800000']
const router = window.location.origin
const SCENE_ID = /^[A-Za-z0-9\-_.:~]{1,128}$/

/** The user of this window: from the URL (?user=), else remembered, else made up. */
function whoAmI () {
  const params = new URLSearchParams(window.location.search)
  const stored = window.sessionStorage.getItem('troupe-user')
  const name = params.get('user') || stored || `Writer ${Math.floor(100 + Math.random() * 900)}`
  window.sessionStorage.setItem('troupe-user', name)
  let hash = 0
  for (const c of name) hash = (hash * 31 + c.charCodeAt(0)) >>> 0
  return { name, color: COLORS[hash % COLORS.length] }
}

/** A demo token from the router (it mints them only when started with --dev-tokens). */
async function devToken (user) {
  const res = await fetch(`${router}/v1/dev/token?user=${encodeURIComponent(user)}`)
  if (!res.ok) {
    throw new Error(`the router gives no demo token (${res.status}); start it with --dev-tokens`)
  }
  return (await res.json()).token
}

const me = whoAmI()

/** A message shown for a few seconds above the page. */
function useNotice () {
  const [notice, setNotice] = useState(null)
  const timer = useRef(null)
  const show = (message) => {
    setNotice(message)
    clearTimeout(timer.current)
    timer.current = setTimeout(() => setNotice(null), 10000)
  }
  useEffect(() => () => clearTimeout(timer.current), [])
  return [notice, show]
}

function App () {
  const initial = new URLSearchParams(window.location.search).get('scene') || 'pilot-scene-1'
  const [sceneId, setSceneId] = useState(initial)
  const [draft, setDraft] = useState(initial)
  const [token, setToken] = useState(null)
  const [error, setError] = useState(null)
  const [blockType, setBlockType] = useState('')
  const [notice, showNotice] = useNotice()
  const view = useRef(null)

  useEffect(() => {
    devToken(me.name).then(setToken, (e) => setError(e.message))
  }, [])
  useEffect(() => {
    const params = new URLSearchParams(window.location.search)
    params.set('scene', sceneId)
    window.history.replaceState(null, '', `?${params}`)
  }, [sceneId])

  const collaboration = useYjsCollaboration({
    sceneId,
    authToken: token,
    router,
    user: me,
    getToken: () => devToken(me.name),
    onNotice: (n) => showNotice(n.message)
  })
  const { mode, readOnly, session } = collaboration
  const firstMode = useRef(true)
  useEffect(() => {
    if (firstMode.current) {
      firstMode.current = false
      return
    }
    if (mode === 'autosave') {
      showNotice('Live editing is unavailable right now: your changes are saved with autosave.')
    } else {
      showNotice('Live editing is back.')
    }
  }, [mode])
  useEffect(() => {
    if (readOnly) showNotice('Read-only: live editing is switched off for this scene.')
  }, [readOnly])
  useEffect(() => {
    if (session && session.error) setError(`offline: ${session.error.reason || session.error.code}`)
  }, [collaboration.error])

  const open = (event) => {
    event.preventDefault()
    const id = draft.trim()
    if (SCENE_ID.test(id)) {
      setError(null)
      setSceneId(id)
    } else {
      setError('scene ids are 1–128 letters, digits or -_.:~')
    }
  }
  const changeBlock = (event) => {
    const editor = view.current
    if (!editor) return
    setBlock(event.target.value)(editor.state, editor.dispatch)
    editor.focus()
  }

  return h('div', { className: 'app' },
    h('header', null,
      h('strong', { className: 'brand' }, 'Troupe'),
      h('form', { id: 'scene-form', onSubmit: open },
        h('label', null, 'Scene ',
          h('input', { id: 'scene', name: 'scene', autoComplete: 'off', spellCheck: false, value: draft, onChange: (e) => setDraft(e.target.value) })),
        ' ',
        h('button', { type: 'submit' }, 'Open')),
      h('select', { id: 'block-type', title: 'Block type (Tab cycles)', value: blockType, onChange: changeBlock },
        BLOCK_TYPES.map((name) => h('option', { key: name, value: name }, BLOCK_LABELS[name]))),
      h(PresenceAvatars, { awareness: collaboration.awareness })),
    h('main', null,
      h('div', { id: 'notice', role: 'status', hidden: notice === null }, notice || ''),
      h(CollaborativeScreenplayEditor, {
        key: sceneId,
        collaboration,
        onView: (editor) => { view.current = editor },
        onBlockType: setBlockType
      })),
    h('footer', null,
      h(CollaborationStatusBar, { collaboration, error }),
      ' ',
      h(TypingIndicator, { awareness: collaboration.awareness }),
      h('span', { className: 'me' }, 'You are ', h('span', { id: 'me', style: { color: me.color } }, me.name))))
}

createRoot(document.getElementById('app')).render(h(App))
