// The demo screenplay editor: one scene at a time, bound to the scene's `prosemirror`
// fragment, with presence avatars, remote cursors, a typing indicator and a status bar fed
// by the Troupe client (connection state and durable acks).

import * as Y from 'yjs'
import { EditorState, Selection } from 'prosemirror-state'
import { EditorView } from 'prosemirror-view'
import { keymap } from 'prosemirror-keymap'
import { baseKeymap } from 'prosemirror-commands'
import { ySyncPlugin, yCursorPlugin, yUndoPlugin, undo, redo, initProseMirrorDoc } from 'y-prosemirror'

import { connectScene } from '../src/index.js'
import { schema, cycleBlock, enterBlock, setBlock, selectDocEdge, BLOCK_TYPES, BLOCK_LABELS } from './screenplay.js'

const COLORS = ['#e6194b', '#3cb44b', '#4363d8', '#f58231', '#911eb4', '#008080', '#9a6324', '#800000']
/** A remote user counts as typing for this long after their last change. */
const TYPING_MS = 2000

const $ = (id) => document.getElementById(id)
const router = window.location.origin

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
let current = null

async function openScene (sceneId) {
  if (current) current.close()
  const params = new URLSearchParams(window.location.search)
  params.set('scene', sceneId)
  window.history.replaceState(null, '', `?${params}`)
  $('scene').value = sceneId
  current = await Scene.open(sceneId)
}

/** One open scene: its doc, session, editor view and the widgets that follow them. */
class Scene {
  static async open (sceneId) {
    const token = await devToken(me.name)
    return new Scene(sceneId, token)
  }

  constructor (sceneId, token) {
    this.session = connectScene({
      router,
      sceneId,
      token,
      doc: new Y.Doc(),
      getToken: () => devToken(me.name)
    })
    this.bind(this.session.doc, this.session.provider.awareness)
    // Back from autosave, the session syncs a fresh doc: the editor moves onto it.
    this.onDoc = ({ doc, awareness }) => {
      const old = this.doc
      this.unbind()
      this.bind(doc, awareness)
      old.destroy()
    }
    this.session.on('doc', this.onDoc)
    this.onStatus = () => {
      if (!this.caretPlaced && this.session.status === 'connected') {
        this.caretPlaced = true
        // The scene arriving replaces the empty page wholesale, which leaves everything
        // selected: a first keystroke would replace the scene. Start with a caret instead.
        setTimeout(() => this.caretAtStart(), 0)
      }
      this.showStatus()
    }
    this.session.on('status', this.onStatus)
    this.session.on('saved', this.onStatus)
    this.onNotice = (notice) => showNotice(notice.message)
    this.session.on('notice', this.onNotice)
    this.onMode = ({ mode, reason }) => {
      if (mode === 'autosave') showNotice(`Live editing is unavailable right now (${reason.split(':')[0]}): your changes are saved with autosave.`)
      else showNotice('Live editing is back.')
    }
    this.session.on('mode', this.onMode)
    this.onReadOnly = ({ readOnly }) => {
      this.view.setProps({ editable: () => !this.session.readOnly })
      showNotice(readOnly ? 'Read-only: live editing is switched off for this scene.' : 'You can edit again.')
    }
    this.session.on('readonly', this.onReadOnly)
    this.ticker = setInterval(() => {
      this.showPresence()
      this.showStatus()
    }, 500)
    this.showStatus()
    this.showPresence()
    this.view.focus()
  }

  /** Builds the editor on `doc` (its `prosemirror` fragment) with `awareness`. */
  bind (doc, awareness) {
    this.doc = doc
    this.awareness = awareness
    this.awareness.setLocalStateField('user', me)
    const fragment = this.doc.getXmlFragment('prosemirror')
    const { doc: pmDoc, mapping } = initProseMirrorDoc(fragment, schema)
    const state = EditorState.create({
      doc: pmDoc,
      schema,
      plugins: [
        ySyncPlugin(fragment, { mapping }),
        yCursorPlugin(this.awareness),
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
    const host = $('editor')
    host.textContent = ''
    // Each view applies its own transactions: after a rebind, the old binding may still
    // dispatch a late one, which must not reach the new view.
    const view = new EditorView(host, {
      state,
      editable: () => !this.session.readOnly,
      dispatchTransaction: (tr) => {
        if (view.isDestroyed) return
        view.updateState(view.state.apply(tr))
        if (view === this.view) this.showBlockType()
      }
    })
    this.view = view
    this.caretPlaced = false
    // Local changes mark this user as typing for the others.
    this.onUpdate = (_update, origin) => {
      if (origin !== this.session.provider) {
        this.awareness.setLocalStateField('typing', Date.now())
      }
    }
    this.doc.on('update', this.onUpdate)
    this.onAwareness = () => this.showPresence()
    this.awareness.on('change', this.onAwareness)
  }

  unbind () {
    this.doc.off('update', this.onUpdate)
    this.awareness.off('change', this.onAwareness)
    this.view.destroy()
  }

  close () {
    clearInterval(this.ticker)
    this.unbind()
    this.session.off('status', this.onStatus)
    this.session.off('doc', this.onDoc)
    this.session.destroy()
    this.doc.destroy()
  }

  showPresence () {
    const avatars = $('avatars')
    avatars.textContent = ''
    const typing = []
    for (const [clientId, state] of this.awareness.getStates()) {
      const user = state.user
      if (!user) continue
      const self = clientId === this.doc.clientID
      const el = document.createElement('span')
      el.className = 'avatar'
      el.style.background = user.color
      el.title = self ? `${user.name} (you)` : user.name
      el.dataset.user = user.name
      el.textContent = initials(user.name)
      avatars.appendChild(el)
      if (!self && state.typing && Date.now() - state.typing < TYPING_MS) typing.push(user.name)
    }
    $('typing').textContent = typing.length === 0
      ? ''
      : `${typing.join(', ')} ${typing.length === 1 ? 'is' : 'are'} typing…`
  }

  showStatus () {
    const { status, hasUnsyncedChanges } = this.session
    const dot = $('dot')
    let colour = 'red'
    let text = 'offline'
    if (status === 'connected') {
      colour = 'green'
      text = hasUnsyncedChanges ? 'saving…' : 'all changes saved'
    } else if (status === 'autosave') {
      colour = 'yellow'
      text = hasUnsyncedChanges ? 'saving with autosave…' : 'saved with autosave'
    } else if (status === 'connecting' || status === 'syncing' || status === 'reconnecting') {
      colour = 'yellow'
      text = status === 'reconnecting' ? 'reconnecting…' : 'connecting…'
      if (hasUnsyncedChanges) text += ' (unsaved changes kept)'
    }
    dot.className = `dot ${colour}`
    dot.dataset.status = colour
    $('status-text').textContent = text
  }

  caretAtStart () {
    const { state } = this.view
    if (!state.selection.empty) this.view.dispatch(state.tr.setSelection(Selection.atStart(state.doc)))
  }

  showBlockType () {
    const name = this.view.state.selection.$from.parent.type.name
    $('block-type').value = name
  }
}

let noticeTimer = null

/** Shows what the cluster told everyone in the scene (a restore) for a few seconds. */
function showNotice (message) {
  const el = $('notice')
  el.textContent = message
  el.hidden = false
  clearTimeout(noticeTimer)
  noticeTimer = setTimeout(() => { el.hidden = true }, 10000)
}

function initials (name) {
  return name.split(/\s+/).filter(Boolean).slice(0, 2).map((w) => w[0].toUpperCase()).join('')
}

function setup () {
  const select = $('block-type')
  for (const name of BLOCK_TYPES) {
    const option = document.createElement('option')
    option.value = name
    option.textContent = BLOCK_LABELS[name]
    select.appendChild(option)
  }
  select.addEventListener('change', () => {
    if (!current) return
    setBlock(select.value)(current.view.state, current.view.dispatch)
    current.view.focus()
  })
  $('me').textContent = me.name
  $('me').style.color = me.color
  $('scene-form').addEventListener('submit', (event) => {
    event.preventDefault()
    const id = $('scene').value.trim()
    if (/^[A-Za-z0-9\-_.:~]{1,128}$/.test(id)) {
      openScene(id).catch(showError)
    } else {
      showError(new Error('scene ids are 1–128 letters, digits or -_.:~'))
    }
  })
  const scene = new URLSearchParams(window.location.search).get('scene') || 'pilot-scene-1'
  openScene(scene).catch(showError)
}

function showError (error) {
  $('status-text').textContent = error.message
  $('dot').className = 'dot red'
}

setup()
