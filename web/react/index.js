/**
 * React bindings for Troupe, as the spec names them: the `useYjsCollaboration` hook and the
 * components a collaborative screenplay page is made of — `CollaborativeScreenplayEditor`,
 * `PresenceAvatars`, `CollaborationStatusBar`, `UserCursor` and `TypingIndicator`.
 *
 * The hook owns one `SceneSession` (see `../src/index.js`) per scene and token, and
 * re-renders on what a page shows: status, unsaved changes, mode (live or autosave),
 * read-only, notices. When the session comes back from autosave on a fresh document, the
 * hook hands out the new `doc` and `awareness` and the editor rebinds to them.
 *
 * Written with `createElement` (no JSX), so it runs as it is in any bundler or in Node.
 *
 * @module @troupe/web/react
 */

import { createElement as h, useEffect, useRef, useState } from 'react'
import * as Y from 'yjs'
import { EditorState, Selection } from 'prosemirror-state'
import { EditorView } from 'prosemirror-view'
import { keymap } from 'prosemirror-keymap'
import { baseKeymap } from 'prosemirror-commands'
import { ySyncPlugin, yCursorPlugin, yUndoPlugin, undo, redo, initProseMirrorDoc } from 'y-prosemirror'

import { connectScene } from '../src/index.js'
import { schema, cycleBlock, enterBlock, selectDocEdge } from './screenplay.js'

export { schema, BLOCK_TYPES, BLOCK_LABELS, setBlock } from './screenplay.js'

/** A remote user counts as typing for this long after their last change (ms). */
export const TYPING_MS = 2000

/** What the hook renders from: a snapshot of the session. */
function snapshotOf (session) {
  return {
    session,
    doc: session.doc,
    provider: session.provider,
    awareness: session.provider.awareness,
    status: session.status,
    isConnected: session.status === 'connected',
    hasUnsyncedChanges: session.hasUnsyncedChanges,
    mode: session.mode,
    readOnly: session.readOnly,
    error: session.error
  }
}

const IDLE = {
  session: null,
  doc: null,
  provider: null,
  awareness: null,
  status: 'connecting',
  isConnected: false,
  hasUnsyncedChanges: false,
  mode: 'live',
  readOnly: false,
  error: null
}

/**
 * Connects a scene for as long as the component is mounted (and `sceneId`, `authToken`
 * and `router` stay the same).
 *
 * @param {object} opts
 * @param {string} opts.sceneId
 * @param {string} opts.authToken the JWT the app's backend minted for this user
 * @param {string} [opts.router] the router's base URL (default: this page's origin)
 * @param {() => Promise<string>|string} [opts.getToken] a fresh token when the node refuses one (4401)
 * @param {{name: string, color: string}} [opts.user] published as presence (`awareness.user`)
 * @param {(status: string) => void} [opts.onSyncStatusChange]
 * @param {(notice: {kind: string, message: string, by: string, at: number}) => void} [opts.onNotice]
 * @param {object} [opts.options] more `connectScene` options (timeouts, fallback…)
 */
export function useYjsCollaboration ({ sceneId, authToken, router, getToken, user, onSyncStatusChange, onNotice, options }) {
  const [state, setState] = useState(IDLE)
  // The latest callbacks, without reconnecting when they change.
  const callbacks = useRef({ getToken, onSyncStatusChange, onNotice, user })
  callbacks.current = { getToken, onSyncStatusChange, onNotice, user }
  const base = router || (typeof window !== 'undefined' ? window.location.origin : '')

  useEffect(() => {
    if (!sceneId || !authToken) return undefined
    const session = connectScene({
      router: base,
      sceneId,
      token: authToken,
      doc: new Y.Doc(),
      getToken: () => (callbacks.current.getToken ? callbacks.current.getToken() : null),
      persist: true,
      ...(options || {})
    })
    let doc = null
    const refresh = () => setState(snapshotOf(session))
    // Local edits flip `hasUnsyncedChanges`: follow the doc the session works on.
    const follow = () => {
      if (doc !== null) doc.off('update', refresh)
      doc = session.doc
      doc.on('update', refresh)
      const me = callbacks.current.user
      if (me) session.provider.awareness.setLocalStateField('user', me)
    }
    follow()
    const onStatus = ({ status }) => {
      refresh()
      if (callbacks.current.onSyncStatusChange) callbacks.current.onSyncStatusChange(status)
    }
    const onDoc = () => {
      follow()
      refresh()
    }
    const onNoticeEvent = (notice) => {
      if (callbacks.current.onNotice) callbacks.current.onNotice(notice)
    }
    session.on('status', onStatus)
    session.on('doc', onDoc)
    session.on('notice', onNoticeEvent)
    for (const name of ['saved', 'mode', 'readonly', 'error']) session.on(name, refresh)
    refresh()
    return () => {
      if (doc !== null) doc.off('update', refresh)
      const last = session.doc
      session.destroy()
      last.destroy()
      setState(IDLE)
    }
    // `options` is read once per connection, like the token.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [base, sceneId, authToken])

  return state
}

/** A user's initials, for an avatar. */
export function initials (name) {
  return String(name || '?').split(/\s+/).filter(Boolean).slice(0, 2).map((w) => w[0].toUpperCase()).join('')
}

/**
 * The DOM of a remote user's cursor in the editor (y-prosemirror's `cursorBuilder`): a caret
 * in their colour with their name above it.
 * @param {{name?: string, color?: string}} user
 */
export function cursorBuilder (user) {
  const cursor = document.createElement('span')
  cursor.classList.add('ProseMirror-yjs-cursor')
  cursor.style.borderColor = user.color || '#888'
  const label = document.createElement('div')
  label.style.backgroundColor = user.color || '#888'
  label.textContent = user.name || 'someone'
  cursor.append(document.createTextNode('\u2060'), label, document.createTextNode('\u2060'))
  return cursor
}

/** A user's cursor as a component (the same look as in the editor), e.g. for a legend. */
export function UserCursor ({ user }) {
  return h('span', { className: 'ProseMirror-yjs-cursor', style: { borderColor: user.color } },
    '\u2060', h('div', { style: { backgroundColor: user.color } }, user.name), '\u2060')
}

/**
 * The scene's screenplay editor: ProseMirror bound to the doc's `prosemirror` fragment, with
 * remote cursors, undo of one's own edits, and the screenwriter's keys (Tab cycles the block
 * type, Enter starts the block that usually follows). Read-only while the node takes no
 * edits; rebinds when the session hands out a fresh doc.
 *
 * @param {object} props
 * @param {ReturnType<typeof useYjsCollaboration>} props.collaboration
 * @param {(view: EditorView|null) => void} [props.onView] the editor view, for toolbars
 * @param {(blockType: string) => void} [props.onBlockType] the type of the block holding the cursor
 */
export function CollaborativeScreenplayEditor ({ collaboration, onView, onBlockType, id = 'editor', className = 'page' }) {
  const host = useRef(null)
  const view = useRef(null)
  const readOnly = useRef(collaboration.readOnly)
  readOnly.current = collaboration.readOnly
  const listeners = useRef({ onView, onBlockType })
  listeners.current = { onView, onBlockType }
  const { doc, awareness, isConnected } = collaboration

  useEffect(() => {
    if (!doc || !awareness || !host.current) return undefined
    const fragment = doc.getXmlFragment('prosemirror')
    const { doc: pmDoc, mapping } = initProseMirrorDoc(fragment, schema)
    const state = EditorState.create({
      doc: pmDoc,
      schema,
      plugins: [
        ySyncPlugin(fragment, { mapping }),
        yCursorPlugin(awareness, { cursorBuilder }),
        yUndoPlugin(),
        keymap({
          'Mod-z': undo,
          'Mod-y': redo,
          'Mod-Shift-z': redo,
          Tab: cycleBlock(1),
          'Shift-Tab': cycleBlock(-1),
          Enter: enterBlock,
          'Mod-Home': selectDocEdge(false),
          'Mod-End': selectDocEdge(true)
        }),
        keymap(baseKeymap)
      ]
    })
    host.current.textContent = ''
    // Each view applies its own transactions: after a rebind, the old binding may still
    // dispatch a late one, which must not reach the new view.
    const editor = new EditorView(host.current, {
      state,
      editable: () => !readOnly.current,
      dispatchTransaction: (tr) => {
        if (editor.isDestroyed) return
        editor.updateState(editor.state.apply(tr))
        const report = listeners.current.onBlockType
        if (report) report(editor.state.selection.$from.parent.type.name)
      }
    })
    view.current = editor
    // Local changes mark this user as typing for the others.
    const onUpdate = (_update, origin) => {
      if (origin !== collaboration.provider) awareness.setLocalStateField('typing', Date.now())
    }
    doc.on('update', onUpdate)
    if (listeners.current.onView) listeners.current.onView(editor)
    editor.focus()
    return () => {
      doc.off('update', onUpdate)
      if (listeners.current.onView) listeners.current.onView(null)
      view.current = null
      editor.destroy()
    }
    // The provider belongs with the doc.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [doc, awareness])

  // The scene arriving replaces the empty page wholesale, which leaves everything selected:
  // a first keystroke would replace the scene. Start with a caret instead.
  useEffect(() => {
    const editor = view.current
    if (!isConnected || !editor) return
    const timer = setTimeout(() => {
      if (!editor.isDestroyed && !editor.state.selection.empty) {
        editor.dispatch(editor.state.tr.setSelection(Selection.atStart(editor.state.doc)))
      }
    }, 0)
    return () => clearTimeout(timer)
  }, [isConnected, doc])

  // Read-only comes and goes without a new view.
  useEffect(() => {
    if (view.current && !view.current.isDestroyed) {
      view.current.setProps({ editable: () => !readOnly.current })
    }
  }, [collaboration.readOnly])

  return h('div', { id, className, ref: host })
}

/** Re-renders when the awareness changes, and every `everyMs` (for things that age). */
function useAwareness (awareness, everyMs) {
  const [, setTick] = useState(0)
  useEffect(() => {
    if (!awareness) return undefined
    const bump = () => setTick((n) => n + 1)
    awareness.on('change', bump)
    const timer = everyMs ? setInterval(bump, everyMs) : null
    return () => {
      awareness.off('change', bump)
      if (timer !== null) clearInterval(timer)
    }
  }, [awareness, everyMs])
  return awareness ? [...awareness.getStates()] : []
}

/** An avatar per person in the scene (the page's own user included, marked "you"). */
export function PresenceAvatars ({ awareness, id = 'avatars' }) {
  const states = useAwareness(awareness, 0)
  const self = awareness ? awareness.clientID : null
  return h('div', { id, 'aria-label': 'People in this scene' },
    states
      .filter(([, state]) => state && state.user)
      .map(([clientId, state]) => h('span', {
        key: clientId,
        className: 'avatar',
        style: { background: state.user.color },
        title: clientId === self ? `${state.user.name} (you)` : state.user.name,
        'data-user': state.user.name
      }, initials(state.user.name))))
}

/** "Ada is typing…", from the others' `typing` presence field. */
export function TypingIndicator ({ awareness, id = 'typing' }) {
  const states = useAwareness(awareness, 500)
  const self = awareness ? awareness.clientID : null
  const now = Date.now()
  const typing = states
    .filter(([clientId, state]) => clientId !== self && state && state.user && state.typing && now - state.typing < TYPING_MS)
    .map(([, state]) => state.user.name)
  return h('span', { id }, typing.length === 0 ? '' : `${typing.join(', ')} ${typing.length === 1 ? 'is' : 'are'} typing…`)
}

/**
 * What a writer needs to trust the page: a coloured dot (green: live and saved; yellow:
 * connecting, saving with autosave; red: offline) and a word on it.
 */
export function CollaborationStatusBar ({ collaboration, error }) {
  const { colour, text } = describeStatus(collaboration, error)
  return h('span', { className: 'status' },
    h('span', { id: 'dot', className: `dot ${colour}`, 'data-status': colour }),
    ' ',
    h('span', { id: 'status-text' }, text))
}

/** The status bar's colour and words for a collaboration state. */
export function describeStatus ({ status, hasUnsyncedChanges, readOnly }, error) {
  if (error) return { colour: 'red', text: error }
  if (status === 'connected') {
    if (readOnly) return { colour: 'green', text: 'read-only' }
    return { colour: 'green', text: hasUnsyncedChanges ? 'saving…' : 'all changes saved' }
  }
  if (status === 'autosave') {
    return { colour: 'yellow', text: hasUnsyncedChanges ? 'saving with autosave…' : 'saved with autosave' }
  }
  if (status === 'connecting' || status === 'syncing' || status === 'reconnecting') {
    let text = status === 'reconnecting' ? 'reconnecting…' : 'connecting…'
    if (hasUnsyncedChanges) text += ' (unsaved changes kept)'
    return { colour: 'yellow', text }
  }
  return { colour: 'red', text: 'offline' }
}
